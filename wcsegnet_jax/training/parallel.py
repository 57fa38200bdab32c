"""Data parallelism: a 1-D mesh over all devices, the batch split along it, the state replicated;
and joining the processes of a multi-process (multi-host) run."""

import contextlib
import dataclasses
import math
import threading
from typing import Iterator

from absl import logging
import jax
from jax._src import distributed as jax_distributed  # where JAX keeps the settings it resolved
from jax.sharding import NamedSharding, PartitionSpec as P

from wcsegnet_jax.core import config_checks
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


# JAX's own join timeout comes this long after ours: its abort (a native stack trace) is left only
# for a process whose deadline thread could not run.
JAX_JOIN_BACKSTOP_S = 30


def initialize(
  distributed: bool,
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  join_timeout_s: float = 300,
  heartbeat_timeout_s: float = 100,
) -> None:
  """Joins a multi-process run; call before any other JAX call. No-op for a one-process run.

  With the coordinator settings (what tools/local_cluster.py passes), joins as told; with
  `distributed` (config.train.distributed) alone, JAX detects the cluster (SLURM, Open MPI,
  Cloud TPU, or JAX_COORDINATOR_ADDRESS). Processes other than 0 then log warnings only: process
  0 speaks for the run, as it alone writes its files.

  A process not joined by all the others within `join_timeout_s` (config.train.join_timeout_s)
  ends with one line naming the setting (exit 2). After joining, JAX's coordination service
  watches the processes: one silent for `heartbeat_timeout_s` (dead, hung, its host gone) makes
  JAX abort the others (exit 134) with its own lines, which name it ("The following tasks are
  unhealthy (stopped sending heartbeats): 1"), and a native stack trace; a dead process 0, which
  hosts the service, aborts them at once ("Failed to send RPC to coordination service"). That
  abort stays JAX's: its binding cannot hand the failure to a Python callback (std::bad_cast).
  """
  problems = coordinator_problems(coordinator_address, num_processes, process_id)
  problems += config_checks.join_problems(join_timeout_s, heartbeat_timeout_s)
  if problems:
    raise errors.ConfigError('; '.join(problems))
  if coordinator_address is None and not distributed:
    return
  if process_id:  # known before joining: quiet JAX's lines about it too
    logging.set_verbosity(logging.WARNING)
  try:
    with _join_deadline(join_timeout_s, coordinator_address, num_processes, process_id):
      jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        initialization_timeout=math.ceil(join_timeout_s) + JAX_JOIN_BACKSTOP_S,
        heartbeat_timeout_seconds=math.ceil(heartbeat_timeout_s),
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


@contextlib.contextmanager
def _join_deadline(
  seconds: float, coordinator_address: str | None, num_processes: int | None, process_id: int | None
) -> Iterator[None]:
  """Ends the process with `join_timeout_message` if the block (JAX's join, which holds the main
  thread in native code until its own timeout, then aborts with a stack trace) outlasts
  `seconds`."""
  joined = threading.Event()

  def give_up():
    if not joined.wait(seconds):
      # A detected cluster's settings: JAX has resolved them before it waits.
      state = getattr(jax_distributed, 'global_state', None)
      errors.exit_now(
        errors.ConfigError(
          join_timeout_message(
            seconds,
            coordinator_address or getattr(state, 'coordinator_address', None),
            num_processes or getattr(state, 'num_processes', None),
            process_id if process_id is not None else getattr(state, 'process_id', None),
          )
        )
      )

  threading.Thread(target=give_up, name='join_deadline', daemon=True).start()
  try:
    yield
  finally:
    joined.set()


def join_timeout_message(
  seconds: float, coordinator_address: str | None, num_processes: int | None, process_id: int | None
) -> str:
  """The one line of a run whose processes did not all join in time."""
  expected = f'{num_processes} processes' if num_processes else 'the processes of the cluster'
  return (
    f'the run could not join within {seconds:g} s: {expected} expected at the coordinator '
    f'{coordinator_address or "(detected)"}, this is process {process_id}; start every process '
    f'(the same --coordinator_address and --num_processes, each its own --process_id), or raise '
    f'train.join_timeout_s (e.g. --config.train.join_timeout_s={2 * math.ceil(seconds)}) when '
    f'some start later'
  )
