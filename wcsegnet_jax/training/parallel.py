"""Data parallelism: a 1-D mesh over all devices, the batch split along it, the state replicated;
and joining the processes of a multi-process (multi-host) run."""

import dataclasses

from absl import logging
import jax
from jax.sharding import NamedSharding, PartitionSpec as P

from wcsegnet_jax.core import errors


@dataclasses.dataclass(frozen=True)
class DataParallel:
  """The two shardings a data-parallel step needs, and how a host batch reaches them."""

  batch: NamedSharding  # leading axis split over the devices of all processes
  replicated: NamedSharding  # parameters, optimizer state, metrics

  def to_device(self, batch: dict) -> dict:
    """This process's share of the global batch -> one global array per leaf."""
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(self.batch, x), batch)


def data_parallel() -> DataParallel:
  # Auto axes: XLA propagates the batch sharding through the model (no sharding-typed code).
  mesh = jax.make_mesh((jax.device_count(),), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
  return DataParallel(batch=NamedSharding(mesh, P('data')), replicated=NamedSharding(mesh, P()))


def coordinator_problems(
  coordinator_address: str | None, num_processes: int | None, process_id: int | None
) -> list[str]:
  """What is wrong with explicit coordinator settings (all three, or none)."""
  given = {
    '--coordinator_address': coordinator_address,
    '--num_processes': num_processes,
    '--process_id': process_id,
  }
  if all(v is None for v in given.values()):
    return []
  missing = [name for name, v in given.items() if v is None]
  if missing:
    return [
      f'{", ".join(missing)} missing: give --coordinator_address, --num_processes and '
      f'--process_id together (or none, to let JAX detect the cluster, e.g. under SLURM)'
    ]
  found = []
  host, _, port = coordinator_address.rpartition(':')
  if not host or not port.isdigit():
    found.append(f'--coordinator_address={coordinator_address!r} is not HOST:PORT')
  if num_processes < 1:
    found.append(f'--num_processes={num_processes} must be at least 1')
  elif not 0 <= process_id < num_processes:
    found.append(f'--process_id={process_id} must be in 0..{num_processes - 1}')
  return found


def initialize(
  distributed: bool,
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
) -> None:
  """Joins a multi-process run; call before any other JAX call. No-op for a one-process run.

  With the coordinator settings (what tools/local_cluster.py passes), joins as told; with
  `distributed` (config.train.distributed) alone, JAX detects the cluster (SLURM, Open MPI,
  Cloud TPU, or JAX_COORDINATOR_ADDRESS). Processes other than 0 then log warnings only: process
  0 speaks for the run, as it alone writes its files.
  """
  problems = coordinator_problems(coordinator_address, num_processes, process_id)
  if problems:
    raise errors.ConfigError('; '.join(problems))
  if coordinator_address is None and not distributed:
    return
  if process_id:  # known before joining: quiet JAX's lines about it too
    logging.set_verbosity(logging.WARNING)
  try:
    jax.distributed.initialize(
      coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
    )
  except (RuntimeError, ValueError) as e:  # no cluster detected, or the coordinator unreachable
    where = (
      f'the coordinator {coordinator_address} ({num_processes} processes)'
      if coordinator_address
      else 'a cluster (config.train.distributed=True)'
    )
    reason = str(e).splitlines()[0][:300].rstrip('.')
    raise errors.ConfigError(
      f'cannot join {where}: {reason}. Under SLURM, start one process per task with srun; '
      f'elsewhere pass --coordinator_address, --num_processes and --process_id '
      f'(tools/local_cluster.py does, on one machine).'
    ) from e
  if jax.process_index() != 0:
    logging.set_verbosity(logging.WARNING)
