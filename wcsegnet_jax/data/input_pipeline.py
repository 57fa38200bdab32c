"""grain pipelines over the TFDS data sources: augmented training batches, padded eval batches.

Batches carry uint8 images; normalisation to float happens on the device (`normalize_images`), so
the host->device copy moves a quarter of the bytes.
"""

import collections
import copy
import dataclasses
import signal
from typing import Iterator

from absl import flags
import cv2
import grain
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from wcsegnet_jax.core import errors
from wcsegnet_jax.data import augment
from wcsegnet_jax.data import tfds_builder

TRAIN_KEYS = ('image', 'label_map', 'cell_type')
# The absl flags grain reads in the process that starts its workers (grain 0.2.18's
# process_prefetch asks whether worker profiling is on when the iterator starts; every other
# read goes through `get_or_default`, and workers set their debug flags from the parent's).
_GRAIN_PARENT_FLAGS = ('grain_enable_multiprocess_worker_profiling',)


@dataclasses.dataclass
class DatasetSplits:
  """One configured dataset, prepared: its name and random-access train/test sources."""

  name: str
  builder: tfds_builder.WbcSegmentation
  train: object | None
  test: object | None


def _prepare_once(source: str, data_config: ml_collections.ConfigDict):
  """Builds on process 0 only; the other processes wait, then open the finished build."""
  if jax.process_count() == 1:
    return tfds_builder.prepare(source, data_config)
  if jax.process_index() == 0:
    tfds_builder.prepare(source, data_config)
  multihost_utils.sync_global_devices(f'wcsegnet_jax: {source} prepared')
  return tfds_builder.prepare(source, data_config)


def load_datasets(data_config: ml_collections.ConfigDict) -> list[DatasetSplits]:
  """Prepares (once) and opens every configured dataset."""
  datasets = []
  for source in data_config.datasets:
    builder = _prepare_once(source, data_config)
    splits = builder.info.splits
    datasets.append(
      DatasetSplits(
        name=tfds_builder.dataset_name(source, builder.builder_config.raw_dir),
        builder=builder,
        train=tfds_builder.data_source(builder, 'train') if 'train' in splits else None,
        test=tfds_builder.data_source(builder, 'test') if 'test' in splits else None,
      )
    )
  return datasets


def data_record(datasets: list[DatasetSplits]) -> dict[str, dict]:
  """What a run trains and tests on: per dataset, its build and the ids of each split."""
  return {
    d.name: {
      'build': d.builder.builder_config.name,
      **{split: ids for split, ids in tfds_builder.read_split_ids(d.builder).items()},
    }
    for d in datasets
  }


@dataclasses.dataclass(frozen=True)
class _Augment(grain.transforms.RandomMap):
  """Picklable (for grain's worker processes) augmentation of one training example."""

  aug: ml_collections.FrozenConfigDict

  def random_map(self, element, rng: np.random.Generator):
    element = {k: element[k] for k in TRAIN_KEYS}
    if not self.aug.enabled:
      return element
    return augment.augment_example(element, rng, self.aug)


def dataset_repeats(datasets: list[DatasetSplits], config: ml_collections.ConfigDict) -> list[int]:
  """How often each dataset's train split enters an epoch (`data.dataset_repeats`; () = once)."""
  repeats = tuple(config.data.dataset_repeats) or (1,) * len(datasets)
  return list(repeats)


def train_epoch_size(datasets: list[DatasetSplits], config: ml_collections.ConfigDict) -> int:
  """Examples per epoch: every training image `augment_repeats` times (the ten-fold), times
  its dataset's repeat."""
  return (
    sum(
      len(d.train) * k
      for d, k in zip(datasets, dataset_repeats(datasets, config))
      if d.train is not None
    )
    * config.augment.augment_repeats
  )


def steps_per_epoch(datasets: list[DatasetSplits], config: ml_collections.ConfigDict) -> int:
  return max(1, train_epoch_size(datasets, config) // config.train.batch_size)


def oversized_batch_warning(
  datasets: list[DatasetSplits], config: ml_collections.ConfigDict
) -> str | None:
  """A warning when train.batch_size exceeds an epoch's examples (`train_epoch_size`): each
  step then draws the training images several times over, and an "epoch" is one step."""
  examples, batch = train_epoch_size(datasets, config), int(config.train.batch_size)
  if batch <= examples:
    return None
  repeats = int(config.augment.augment_repeats)
  return (
    f'train.batch_size={batch} is larger than an epoch of training examples ({examples}: '
    f'{examples // repeats} images x augment.augment_repeats={repeats}): each step takes '
    f'them {batch / examples:.1f} times over and each "epoch" is one step; set '
    f'train.batch_size to at most {examples}'
  )


def epoch_examples(
  datasets: list[DatasetSplits], config: ml_collections.ConfigDict
) -> grain.MapDataset:
  """One epoch's training examples, unshuffled and unaugmented (`train_epoch_size` of them)."""
  sources = [
    grain.MapDataset.source(d.train).repeat(k)
    for d, k in zip(datasets, dataset_repeats(datasets, config))
    if d.train is not None
  ]
  if not sources:
    raise errors.DataError(f'no training images in {[d.name for d in datasets]}')
  return grain.MapDataset.concatenate(sources).repeat(config.augment.augment_repeats)


def train_dataset(
  datasets: list[DatasetSplits],
  config: ml_collections.ConfigDict,
  process_index: int = 0,
  process_count: int = 1,
) -> grain.IterDataset:
  """Infinite, seeded, augmented batches of this process's share of the global batch.

  Each epoch is the union of the datasets' train splits, each image `augment_repeats` times,
  shuffled as a whole and reshuffled (and re-augmented) every epoch. Batches run on across
  epoch boundaries; the loop's "epoch" is `steps_per_epoch` batches (the remainder of
  N * augment_repeats / batch_size starts the next epoch's first batch). Deterministic given
  the seed, and its iterator's state can be saved and restored for an exact resume.
  """
  ds = epoch_examples(datasets, config).shuffle(seed=config.input.shuffle_seed)
  ds = ds.random_map(
    _Augment(ml_collections.FrozenConfigDict(config.augment)), seed=config.input.shuffle_seed + 1
  )
  ds = ds.repeat(None)  # reseeds shuffle and augmentation each epoch
  # Process i takes the i-th contiguous block of each global batch: the rows of the global array
  # it holds, so the batch the step sees is in the same order as in a one-process run.
  ds = ds.batch(config.train.batch_size // process_count, drop_remainder=True)
  ds = ds[process_index::process_count]
  it = ds.to_iter_dataset(
    grain.ReadOptions(
      num_threads=config.input.read_threads, prefetch_buffer_size=config.input.prefetch
    )
  )
  if config.input.num_workers == 0:
    _single_threaded_opencv()  # this process's read threads augment
    return it
  _let_grain_read_its_flags()
  return it.mp_prefetch(
    grain.MultiprocessingOptions(
      num_workers=config.input.num_workers, per_worker_buffer_size=config.input.worker_buffer_size
    ),
    worker_init_fn=_init_worker,
  )


def _single_threaded_opencv() -> None:
  """Turns OpenCV's thread pool off in a process whose grain read threads augment.

  Those threads already warp `read_threads` small images at once, so OpenCV's own threads
  would only fight them for the cores. Set here, where a training pipeline starts reading,
  not at import: importers that only evaluate or predict keep OpenCV's threads.
  """
  cv2.setNumThreads(1)


def _let_grain_read_its_flags() -> None:
  """Lets grain read its own flags' defaults where no `absl.app.run` parsed them (tests,
  notebooks), where reading one raises `UnparsedFlagAccessError`.

  Only grain's flags are marked present, as grain's workers mark theirs; marking the whole
  program's flags parsed would hide a missing parse anywhere else.
  """
  if flags.FLAGS.is_parsed():
    return
  for name in _GRAIN_PARENT_FLAGS:
    if name in flags.FLAGS:
      flags.FLAGS[name].present = True


def _init_worker(worker_index: int, worker_count: int) -> None:
  """Sets up one grain worker process: it ignores Ctrl-C and warps with one OpenCV thread.

  Ctrl-C reaches the whole process group: the main process stops the run cleanly and ends its
  workers, which would otherwise each print a KeyboardInterrupt traceback.
  """
  del worker_index, worker_count
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  _single_threaded_opencv()


class DevicePrefetch(grain.DatasetIterator):
  """A grain iterator's batches, sent to the device `depth - 1` batches ahead of the one
  returned, so the host->device copy of the next batch overlaps the current step.

  Its state (what a checkpoint saves) is the parent's as of the last batch *returned*, not
  the parent's own, which is ahead by the batches in flight: a resume restarts at the first
  batch no step has taken. Setting a state drops the batches in flight.
  """

  def __init__(self, parent: grain.DatasetIterator, to_device, depth: int = 2):
    super().__init__(parent)
    self._to_device, self._depth = to_device, depth
    self._in_flight = collections.deque()  # (device batch, parent state after it)
    self._state = copy.deepcopy(parent.get_state())

  def __next__(self):
    while len(self._in_flight) < self._depth:
      try:
        host_batch = next(self._parent)
      except StopIteration:
        break
      self._in_flight.append((self._to_device(host_batch), copy.deepcopy(self._parent.get_state())))
    if not self._in_flight:
      raise StopIteration
    batch, self._state = self._in_flight.popleft()
    return batch

  def get_state(self) -> dict:
    return copy.deepcopy(self._state)

  def set_state(self, state: dict) -> None:
    self._in_flight.clear()
    self._parent.set_state(state)
    self._state = copy.deepcopy(state)


def eval_batches(source, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
  """The whole split once, in order, in batches of exactly `batch_size` (one compile).

  The last batch is padded by repeating its first example; `valid` marks the real ones.
  """
  n = len(source)
  for start in range(0, n, batch_size):
    items = [source[i] for i in range(start, min(start + batch_size, n))]
    valid = np.zeros(batch_size, bool)
    valid[: len(items)] = True
    items += [items[0]] * (batch_size - len(items))
    yield {
      'image': np.stack([e['image'] for e in items]),
      'label_map': np.stack([e['label_map'] for e in items]),
      'cell_type': np.array([e['cell_type'] for e in items], np.int32),
      'file_id': np.array([tfds_builder.as_str(e['file_id']) for e in items]),
      'valid': valid,
    }
