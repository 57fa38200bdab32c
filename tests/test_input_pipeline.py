"""Tests of wcsegnet_jax.input_pipeline on the generated data: batches, seeds, resume, eval."""

import time

from absl import flags
import cv2
import numpy as np
import pytest

import conftest
from configs import base
from wcsegnet_jax.core import classes
from wcsegnet_jax.core import errors
from wcsegnet_jax.data import input_pipeline
from wcsegnet_jax.data import normalize
from wcsegnet_jax.data import tfds_builder

BATCH = 4
REPEATS = 2


def small_config(wbc_raw, wbc_tfds_dir, **input_overrides):
  c = conftest.data_config(wbc_raw[0], wbc_tfds_dir)
  c.train.batch_size = BATCH
  c.augment.augment_repeats = REPEATS
  c.input.read_threads = 2
  c.input.prefetch = 8
  for key, value in input_overrides.items():
    setattr(c.input, key, value)
  return c


@pytest.fixture(scope='module')
def datasets(wbc_raw, wbc_tfds_dir, wbc_builders):  # wbc_builders: prepared once per session
  del wbc_builders
  return input_pipeline.load_datasets(small_config(wbc_raw, wbc_tfds_dir).data)


@pytest.fixture
def config(wbc_raw, wbc_tfds_dir):
  return small_config(wbc_raw, wbc_tfds_dir)


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert sorted(x) == sorted(y)
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_load_datasets(datasets):
  assert [d.name for d in datasets] == ['jiangxi', 'cellavision']
  for d in datasets:
    assert len(d.train) == 10 and len(d.test) == 2


def test_train_batches(datasets, config):
  batches = take(iter(input_pipeline.train_dataset(datasets, config)), 12)  # over an epoch
  for batch in batches:
    assert sorted(batch) == sorted(input_pipeline.TRAIN_KEYS)
    assert batch['image'].shape == (BATCH, 120, 120, 3) and batch['image'].dtype == np.uint8
    assert batch['label_map'].shape == (BATCH, 120, 120)
    assert batch['label_map'].dtype == np.uint8
    assert batch['cell_type'].shape == (BATCH,)
    assert np.issubdtype(batch['cell_type'].dtype, np.integer)
    assert set(np.unique(batch['cell_type']).tolist()) <= {1, 2, 3}
    assert batch['label_map'].max() < classes.NUM_CLASSES
    for label_map, cell_type in zip(batch['label_map'], batch['cell_type']):
      # Each label map holds its own cell's class only (labels travel with their example).
      assert set(np.unique(label_map).tolist()) <= {0, int(cell_type)}


def test_epoch_sees_each_image_augment_repeats_times(datasets, config):
  """One epoch = every training image `augment_repeats` times, each time augmented anew."""
  config.augment.enabled = False  # un-augmented: identify images by their pixels
  steps = input_pipeline.steps_per_epoch(datasets, config)
  batches = take(iter(input_pipeline.train_dataset(datasets, config)), steps)
  seen = [b['image'][i].tobytes() for b in batches for i in range(BATCH)]
  train = [d.train[i]['image'].tobytes() for d in datasets for i in range(len(d.train))]
  assert sorted(seen) == sorted(train * REPEATS)


def test_no_training_images_is_a_data_error(config):
  empty = input_pipeline.DatasetSplits(name='empty', builder=None, train=None, test=None)
  with pytest.raises(errors.DataError, match='empty'):
    input_pipeline.train_dataset([empty], config)


def test_steps_per_epoch(datasets, config):
  assert input_pipeline.train_epoch_size(datasets, config) == 2 * 10 * REPEATS
  assert input_pipeline.steps_per_epoch(datasets, config) == 2 * 10 * REPEATS // BATCH
  config.train.batch_size = 1000
  assert input_pipeline.steps_per_epoch(datasets, config) == 1


def test_same_seed_same_batches(datasets, config):
  a = take(iter(input_pipeline.train_dataset(datasets, config)), 3)
  b = take(iter(input_pipeline.train_dataset(datasets, config)), 3)
  assert_same_batches(a, b)


def test_other_shuffle_seed_other_batches(datasets, config):
  a = take(iter(input_pipeline.train_dataset(datasets, config)), 3)
  config.input.shuffle_seed = 1
  b = take(iter(input_pipeline.train_dataset(datasets, config)), 3)
  assert not all(np.array_equal(x['image'], y['image']) for x, y in zip(a, b))


def test_epochs_are_reshuffled_and_reaugmented(datasets, config):
  steps = input_pipeline.steps_per_epoch(datasets, config)
  batches = take(iter(input_pipeline.train_dataset(datasets, config)), 2 * steps)
  first = np.concatenate([b['cell_type'] for b in batches[:steps]])
  second = np.concatenate([b['cell_type'] for b in batches[steps:]])
  assert sorted(first) == sorted(second)
  images = lambda bs: np.concatenate([b['image'] for b in bs])
  assert not np.array_equal(images(batches[:steps]), images(batches[steps:]))


def test_iterator_state_round_trip(datasets, config):
  it = iter(input_pipeline.train_dataset(datasets, config))
  take(it, 2)
  state = it.get_state()
  a = take(it, 2)
  resumed = iter(input_pipeline.train_dataset(datasets, config))
  resumed.set_state(state)
  b = take(resumed, 2)
  assert_same_batches(a, b)


def test_iterator_state_round_trip_across_an_epoch(datasets, config):
  steps = input_pipeline.steps_per_epoch(datasets, config)
  it = iter(input_pipeline.train_dataset(datasets, config))
  take(it, steps - 1)
  state = it.get_state()
  a = take(it, 3)  # the epoch's last batch and the next epoch's first two
  resumed = iter(input_pipeline.train_dataset(datasets, config))
  resumed.set_state(state)
  assert_same_batches(a, take(resumed, 3))


def test_augmentation_disabled_passes_examples_through(datasets, config):
  config.augment.enabled = False
  batch = next(iter(input_pipeline.train_dataset(datasets, config)))
  originals = {
    d.train[i]['image'].tobytes(): d.train[i] for d in datasets for i in range(len(d.train))
  }
  for image, label_map in zip(batch['image'], batch['label_map']):
    np.testing.assert_array_equal(label_map, originals[image.tobytes()]['label_map'])


def test_process_shards_partition_the_global_batch(datasets, config):
  config.augment.enabled = False
  whole = take(iter(input_pipeline.train_dataset(datasets, config)), 2)
  shards = [take(iter(input_pipeline.train_dataset(datasets, config, i, 2)), 2) for i in range(2)]
  for step in range(2):
    assert shards[0][step]['image'].shape[0] == BATCH // 2
    together = np.concatenate([s[step]['image'] for s in shards])
    assert sorted(x.tobytes() for x in together) == sorted(
      x.tobytes() for x in whole[step]['image']
    )


def _check_eval_covers(source, batch_size):
  batches = list(input_pipeline.eval_batches(source, batch_size))
  n = len(source)
  assert len(batches) == -(-n // batch_size)
  ids = []
  for b in batches:
    assert b['image'].shape == (batch_size, 120, 120, 3) and b['image'].dtype == np.uint8
    assert b['label_map'].shape == (batch_size, 120, 120)
    assert b['cell_type'].shape == b['valid'].shape == b['file_id'].shape == (batch_size,)
    assert b['valid'].dtype == bool
    ids += b['file_id'][b['valid']].tolist()
  assert ids == [tfds_builder.as_str(source[i]['file_id']) for i in range(n)]  # in order, once
  last = batches[-1]
  n_last = n - batch_size * (len(batches) - 1)
  assert last['valid'].tolist() == [True] * n_last + [False] * (batch_size - n_last)
  for j in range(n_last, batch_size):  # padding repeats the batch's first example
    np.testing.assert_array_equal(last['image'][j], last['image'][0])
    assert last['file_id'][j] == last['file_id'][0]
  for b, start in zip(batches, range(0, n, batch_size)):
    for j in np.flatnonzero(b['valid']):
      np.testing.assert_array_equal(b['label_map'][j], source[start + j]['label_map'])
      assert b['cell_type'][j] == source[start + j]['cell_type']


@pytest.mark.parametrize('batch_size', [1, 3, 4, 32])
def test_eval_batches(datasets, batch_size):
  for d in datasets:
    _check_eval_covers(d.test, batch_size)
    _check_eval_covers(d.train, batch_size)


def test_normalize_images():
  images = np.array([[[0, 255, 51], [127, 128, 204]]], np.uint8)
  out = np.asarray(normalize.normalize_images(images, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)))
  assert out.dtype == np.float32 and out.shape == images.shape
  want = (images / 255.0 - 0.5) / 0.25
  np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(out[0, 0], [-2.0, 2.0, -1.2], atol=1e-6)
  # Per-channel statistics apply to their own channel.
  out = np.asarray(
    normalize.normalize_images(
      np.full((2, 3), 255, np.uint8).reshape(1, 2, 3), (0.0, 0.5, 1.0), (1.0, 0.5, 0.25)
    )
  )
  np.testing.assert_allclose(out[0, 0], [1.0, 1.0, 0.0], atol=1e-6)


def test_standardize_each_image_removes_each_images_colour_and_strength():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 128, (2, 9, 7, 3)).astype(np.uint8)
  out = np.asarray(normalize.standardize_each_image(images))
  assert out.dtype == np.float32 and out.shape == images.shape
  np.testing.assert_allclose(out.mean(axis=(1, 2)), 0.0, atol=1e-5)
  np.testing.assert_allclose(out.std(axis=(1, 2)), 1.0, atol=1e-4)
  # A stronger stain (x2) and a shifted one (+ per channel) give the same input, per image.
  stained = images.copy()
  stained[0] = images[0] * 2
  stained[1] = images[1] + np.array([30, 0, 90], np.uint8)
  np.testing.assert_allclose(normalize.standardize_each_image(stained), out, atol=1e-5)
  # A flat channel is centred, not divided by ~0.
  flat = np.full((1, 4, 4, 3), 200, np.uint8)
  np.testing.assert_allclose(normalize.standardize_each_image(flat), 0.0, atol=1e-3)


def test_model_inputs_follow_data_normalize():
  c = base.get_config()
  images = np.random.default_rng(1).integers(0, 256, (2, 5, 5, 3)).astype(np.uint8)
  np.testing.assert_array_equal(
    normalize.model_inputs(images, c.data),
    normalize.normalize_images(images, c.data.mean, c.data.std),
  )
  c.data.normalize = 'per_image'
  np.testing.assert_array_equal(
    normalize.model_inputs(images, c.data), normalize.standardize_each_image(images)
  )


def test_worker_processes_give_the_same_batches(wbc_raw, wbc_tfds_dir, datasets):
  # grain reads absl flags, which `absl.app.run` parses in the tools; here nobody does: the
  # pipeline lets grain read its own defaults without marking the program's flags parsed.
  parsed = flags.FLAGS.is_parsed()
  in_process = take(
    iter(
      input_pipeline.train_dataset(datasets, small_config(wbc_raw, wbc_tfds_dir, num_workers=0))
    ),
    3,
  )
  start = time.time()
  with_workers = iter(
    input_pipeline.train_dataset(datasets, small_config(wbc_raw, wbc_tfds_dir, num_workers=1))
  )
  assert_same_batches(in_process, take(with_workers, 3))
  del with_workers
  assert time.time() - start < 60  # about 3 s on 2 CPU cores; mark `slow` if it grows past 20 s
  assert flags.FLAGS.is_parsed() == parsed


def test_training_pipeline_turns_opencv_threads_off(datasets, config):
  # Its grain read threads each warp an image; OpenCV's own threads would fight them.
  config.input.num_workers = 0
  input_pipeline.train_dataset(datasets, config)
  assert cv2.getNumThreads() == 1


def test_dataset_repeats_weigh_the_datasets(datasets, config):
  """data.dataset_repeats=(1, 3): the second dataset's images enter each epoch 3 times."""
  config.data.dataset_repeats = (1, 3)
  epoch = input_pipeline.epoch_examples(datasets, config)
  assert len(epoch) == input_pipeline.train_epoch_size(datasets, config)
  counts = {}
  for example in epoch:
    key = (tfds_builder.as_str(example['dataset']), tfds_builder.as_str(example['file_id']))
    counts[key] = counts.get(key, 0) + 1
  for d, repeat in zip(datasets, (1, 3)):
    ids = [k for k in counts if k[0] == tfds_builder.as_str(d.train[0]['dataset'])]
    assert len(ids) == len(d.train)
    assert {counts[k] for k in ids} == {repeat * config.augment.augment_repeats}
