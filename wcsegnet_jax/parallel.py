"""Data parallelism: a 1-D mesh over all devices, the batch split along it, the state replicated."""

import dataclasses

import jax
from jax.sharding import NamedSharding, PartitionSpec as P


@dataclasses.dataclass(frozen=True)
class DataParallel:
  """The two shardings a data-parallel step needs, and how a host batch reaches them."""
  batch: NamedSharding        # leading axis split over the devices of all processes
  replicated: NamedSharding   # parameters, optimizer state, metrics

  def to_device(self, batch: dict) -> dict:
    """This process's share of the global batch -> one global array per leaf."""
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(self.batch, x), batch)


def data_parallel() -> DataParallel:
  # Auto axes: XLA propagates the batch sharding through the model (no sharding-typed code).
  mesh = jax.make_mesh((jax.device_count(),), ('data',),
                       axis_types=(jax.sharding.AxisType.Auto,))
  return DataParallel(batch=NamedSharding(mesh, P('data')), replicated=NamedSharding(mesh, P()))
