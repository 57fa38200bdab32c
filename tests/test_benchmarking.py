"""Tests of wcsegnet_jax.benchmarking, tools/benchmark.py and the PyTorch reference model.

The nets are tiny and their dropouts off: on a 2-core CPU, XLA takes ~6 s more to compile the
train step with dropout's random bits, and the numbers measured here only need to be sane.
"""

import json
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import pytest

from conftest import ROOT
from configs import base
from configs import smoke
from wcsegnet_jax.core import classes
from wcsegnet_jax.dev import benchmarking
from wcsegnet_jax.model import models

NO_DROPOUT = {'encoder_dropout': 0.0, 'decoder_dropout': 0.0, 'head_dropout': 0.0}


def tiny_config():
  c = base.get_config()
  c.data.image_size = 32
  c.model.update(base_width=2, num_levels=2, blocks_per_stage=1, **NO_DROPOUT)
  return c


def flax_param_count(config) -> int:
  model = models.create_model(config.model, classes.table_of(config.data).num_classes)
  size = config.data.image_size
  shapes = jax.eval_shape(
    lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3), jnp.float32), train=False)
  )
  return models.count_params(shapes['params'])


def test_timed_steps_measures_milliseconds():
  t = benchmarking.timed_steps(lambda: time.sleep(0.01), steps=5, warmup=1)
  assert t['steps'] == 5 and t['warmup'] == 1
  assert 10.0 <= t['min_ms'] <= t['p10_ms'] <= t['median_ms'] <= t['p90_ms'] < 1000.0


def test_time_fn_on_a_trivial_function():
  calls = []

  def next_args(args, out):
    calls.append(1)
    return (out,)

  x = jnp.zeros((1000,), jnp.float32)
  t = benchmarking.time_fn(
    jax.jit(lambda v: v * 2.0 + 1.0), (x,), steps=10, warmup=2, next_args=next_args
  )
  assert len(calls) == 12  # the output threads into every next call, warm-up included
  assert 0.0 < t['p10_ms'] <= t['median_ms'] <= t['p90_ms'] < 1000.0
  assert t['lower_s'] > 0.0 and t['compile_s'] > 0.0
  assert t['flops'] == pytest.approx(2000.0)  # one multiply and one add per element
  assert t['memory']['argument_size_in_bytes'] == 4000


def test_ceilings_are_positive():
  mm = benchmarking.matmul_peak_flops(256, 'float32', steps=3, warmup=1)
  assert mm['flops'] == 2 * 256**3 and mm['flops_per_s'] > 0
  bw = benchmarking.memory_bandwidth(2**20, steps=3, warmup=1)
  assert bw['bytes_moved'] == 2 * 2**20 and bw['bytes_per_s'] > 0
  assert benchmarking.peak_bytes_in_use() is None or benchmarking.peak_bytes_in_use() > 0


def test_flops_scale_with_pixels():
  c = base.get_config()
  c.model.update(base_width=4, num_levels=2)
  model = models.create_model(c.model, classes.table_of(c.data).num_classes)
  flops64 = benchmarking.model_flops_per_image(model, 64, 64)
  flops128 = benchmarking.model_flops_per_image(model, 128, 128)
  assert flops64 > 0
  assert 3.5 < flops128 / flops64 < 4.5


def test_hand_count_of_flops_matches_xla_for_the_paper_model():
  """The reconciliation of docs/benchmarks.md: XLA's forward count is the convs' taps inside
  the (120 -> 128 padded) image plus ~0.2% elementwise work; counting every tap gives ~48.4."""
  c = base.get_config()
  xla = benchmarking.model_flops_per_image(
    models.create_model(c.model, classes.table_of(c.data).num_classes), 120, 120
  )
  exact = benchmarking.conv_flops_per_image(c.model, 120, 120, count_padding_taps=False)
  dense = benchmarking.conv_flops_per_image(c.model, 120, 120)
  assert exact['total'] < xla < 1.005 * exact['total']
  assert dense['total'] == pytest.approx(48.39e9, rel=1e-3)
  # The first conv by hand: 2 * 9 * 3 * 64 MACs per pixel of the 128x128 padded input.
  assert dense['encoder0'] > 2 * 9 * 3 * 64 * 128 * 128


def test_benchmark_train_step_on_a_tiny_config():
  c = tiny_config()
  peak = benchmarking.matmul_peak_flops(steps=3, warmup=1)['flops_per_s']
  r = benchmarking.benchmark_train_step(c, 2, 'float32', steps=3, warmup=1, peak_flops_per_s=peak)
  assert r['mode'] == 'train' and r['batch_size'] == 2 and r['dtype'] == 'float32'
  assert r['num_params'] == flax_param_count(c)
  assert r['images_per_s'] > 0 and r['ms_per_step'] > 0
  assert r['flops_per_step'] > 0 and r['flops_source'] == 'compiled'
  # A tiny net on a CPU is all overhead; the matmul peak may also be beaten a little by a
  # lucky timing, hence the slack above 1.
  assert 0 < r['mfu'] <= 1.5
  forward = benchmarking.model_flops_per_image(
    models.create_model(c.model, classes.table_of(c.data).num_classes), 32, 32
  )
  assert 2.5 < r['flops_per_image'] / forward < 3.5  # backward ~ 2x forward


def test_speed_ratios():
  results = [
    {'mode': 'train', 'batch_size': 2, 'dtype': 'float32', 'images_per_s': 30.0},
    {'mode': 'torch_train', 'batch_size': 2, 'dtype': 'float32', 'images_per_s': 20.0},
    {'mode': 'infer', 'batch_size': 2, 'dtype': 'float32', 'images_per_s': 9.0},
    {'mode': 'input', 'batch_size': 8, 'num_workers': 0, 'images_per_s': 5.0},
  ]
  (ratio,) = benchmarking.speed_ratios(results)
  assert ratio['mode'] == 'train' and ratio['jax_over_torch'] == pytest.approx(1.5)


def test_datasheet_peak_tells_the_parts_apart():
  """JAX's device kinds as NVIDIA's drivers name them; the SXM H100 is not called SXM."""
  peak = lambda kind: benchmarking.datasheet_peak(kind)['bf16_dense_flops_per_s'] / 1e12
  name = lambda kind: benchmarking.datasheet_peak(kind)['name']
  assert (name('NVIDIA H100 80GB HBM3'), peak('NVIDIA H100 80GB HBM3')) == ('H100 SXM', 989.0)
  assert (name('NVIDIA H100 PCIe'), peak('NVIDIA H100 PCIe')) == ('H100 PCIe', 756.0)
  assert (name('NVIDIA H200'), peak('NVIDIA H200')) == ('H200', 989.0)
  assert (name('NVIDIA A100-SXM4-80GB'), peak('NVIDIA A100-PCIE-40GB')) == ('A100', 312.0)
  for other in ('cpu', 'NVIDIA H100 NVL', 'NVIDIA GH200 480GB', 'TPU v5 lite'):
    assert benchmarking.datasheet_peak(other) is None, other


def test_torch_rows_get_both_mfus_from_their_jax_twin():
  results = [
    {
      'mode': 'train',
      'batch_size': 2,
      'dtype': 'bfloat16',
      'images_per_s': 30.0,
      'flops_per_image': 1e12,
    },
    {'mode': 'torch_train', 'batch_size': 2, 'dtype': 'bfloat16', 'images_per_s': 20.0},
  ]
  benchmarking.add_torch_flops(results, 1e14, 1e15)
  assert results[1]['flops_per_s'] == pytest.approx(2e13)
  assert results[1]['mfu'] == pytest.approx(0.2)
  assert results[1]['mfu_datasheet'] == pytest.approx(0.02)


def test_cli_end_to_end(wbc_raw, tmp_path):
  output = tmp_path / 'bench.json'
  args = [
    sys.executable,
    'tools/benchmark.py',
    '--config=configs/smoke.py',
    f'--config.data.raw_dir={wbc_raw[0]}',
    f'--config.data.tfds_dir={tmp_path / "tfds"}',
    '--config.data.image_size=32',
    '--config.model.base_width=2',
    '--config.train.batch_size=2',
    '--config.input.read_threads=1',
    *[f'--config.model.{k}={v}' for k, v in NO_DROPOUT.items()],
    '--batch_sizes=2',
    '--dtypes=float32',
    '--steps=3',
    '--warmup=1',
    '--modes=train,infer,input',
    '--input_workers=0',
    '--input_batches=2',
    '--torch',
    '--notorch_compile',
    '--matmul_size=256',
    '--bandwidth_mib=4',
    f'--output={output}',
  ]
  done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert 'images/s' in done.stdout
  report = json.loads(output.read_text())
  assert {
    'command',
    'environment',
    'config',
    'ceilings',
    'model_flops',
    'results',
    'ratios',
    'notes',
  } <= set(report)
  assert {'device_kind', 'jax', 'date'} <= set(report['environment'])
  assert report['ceilings']['matmul']['size'] == 256
  assert report['complete'] and report['ceilings']['datasheet'] is None  # a CPU
  assert report['ceilings']['memory_bandwidth']['bytes_per_s'] > 0
  rows = {r['mode']: r for r in report['results']}
  for row in report['results']:
    assert 'error' not in row, row
  for mode in ('train', 'infer'):
    assert rows[mode]['images_per_s'] > 0 and rows[mode]['flops_per_step'] > 0
    assert rows[mode]['mfu'] > 0
  assert rows['input']['images_per_s'] > 0 and rows['input']['num_workers'] == 0
  try:
    import torch  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    assert 'torch_train' not in rows and 'skipped' in report['notes'][0]
  else:
    assert rows['torch_train']['num_params'] == rows['train']['num_params']
    assert rows['torch_train']['flops_per_image'] == rows['train']['flops_per_image']
    assert {r['mode'] for r in report['ratios']} == {'train', 'infer'}


@pytest.mark.parametrize(
  'overrides',
  [
    {},
    {'residual': False},
    {'block_norm': 'batch'},
    {'upsample': 'nearest'},
    {'num_levels': 3, 'blocks_per_stage': 1, 'activation': 'relu'},
  ],
)
@pytest.mark.torch_parity
def test_torch_parity_parameter_count(overrides):
  pytest.importorskip('torch', reason='PyTorch is optional; the reference is checked with it')
  from tools import torch_reference  # pylint: disable=g-import-not-at-top

  for config in (smoke.get_config(), tiny_config()):
    config.model.update(overrides)
    assert torch_reference.count_params(
      torch_reference.build_model(config.model)
    ) == flax_param_count(config)


@pytest.mark.torch_parity
def test_torch_parity_outputs_match_the_paper_model():
  torch = pytest.importorskip('torch', reason='PyTorch is optional')
  from tools import torch_reference  # pylint: disable=g-import-not-at-top

  c = base.get_config()
  assert (
    torch_reference.count_params(torch_reference.build_model(c.model))
    == flax_param_count(c)
    == 63_878_724
  )
  # Padded up to a multiple of 2**num_levels and cropped back, as ours.
  tiny = torch_reference.build_model(tiny_config().model).eval()
  with torch.no_grad():
    assert tuple(tiny(torch.zeros(1, 3, 30, 29)).shape) == (1, 4, 30, 29)


@pytest.mark.torch_parity
def test_torch_parity_tta_is_flip_equivariant_like_ours():
  """The reference's timed inference averages over the four flips when eval.tta is on: its
  prediction for a mirrored image is then the mirrored prediction, as without TTA it is not."""
  torch = pytest.importorskip('torch', reason='PyTorch is optional')
  from tools import torch_reference  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  model = torch_reference.build_model(tiny_config().model).eval()
  x = torch.randn(2, 3, 32, 32)
  no_autocast = torch.autocast('cpu', enabled=False)
  with torch.no_grad():
    for tta in (True, False):
      probs = torch_reference.predict_probs(model, x, tta, no_autocast)
      mirrored = torch_reference.predict_probs(model, torch.flip(x, (3,)), tta, no_autocast)
      assert probs.shape == (2, 4, 32, 32)
      assert torch.allclose(probs.sum(dim=1), torch.ones(2, 32, 32), atol=1e-5)
      equivariant = torch.allclose(torch.flip(mirrored, (3,)), probs, atol=1e-5)
      assert equivariant == tta


def test_conv_layers_list_every_conv_of_the_model_once_with_its_count():
  config = tiny_config()
  config.model.block_norm = 'batch'
  layers = benchmarking.conv_layers(config, batch_size=4)
  shapes = jax.eval_shape(
    lambda: models.model_for(config).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
  )
  # The 2x2 upsampling kernels belong to matrix products (models.TransposedConv2x2), not convs.
  kernels = [
    leaf
    for path, leaf in jax.tree_util.tree_leaves_with_path(shapes['params'])
    if path[-1].key == 'kernel' and leaf.ndim == 4 and leaf.shape[:2] != (2, 2)
  ]
  # Each conv module is applied once per step: one count per kernel in the parameters.
  assert sum(layer['count'] for layer in layers) == len(kernels)
  assert len(
    {(tuple(l['input_shape']), l['features'], tuple(l['kernel_size'])) for l in layers}
  ) == len(layers)
  first = next(l for l in layers if l['input_shape'][-1] == 3 and l['kernel_size'] == [3, 3])
  assert first['input_shape'] == [4, 32, 32, 3] and first['features'] == 2
  assert first['strides'] == [1, 1] and first['padding'] == 'SAME'


def test_conv_flops_count_multiply_adds_twice():
  layer = {
    'input_shape': [2, 8, 6, 3],
    'features': 5,
    'kernel_size': [3, 3],
    'strides': [1, 1],
    'padding': 'SAME',
  }
  assert benchmarking.conv_flops(layer) == 2 * 2 * 8 * 6 * 9 * 3 * 5
  assert benchmarking.conv_flops({**layer, 'strides': [2, 2]}) == 2 * 2 * 4 * 3 * 9 * 3 * 5


def test_benchmark_conv_times_its_three_passes():
  layer = {
    'input_shape': [2, 8, 8, 3],
    'features': 4,
    'kernel_size': [3, 3],
    'strides': [1, 1],
    'padding': 'SAME',
    'count': 1,
  }
  times = benchmarking.benchmark_conv(layer, steps=2, warmup=1)
  assert set(times) == set(benchmarking.CONV_PASSES)
  assert all(t > 0 for t in times.values())


def test_conv_kernels_cli_end_to_end(tmp_path):
  output = tmp_path / 'convs.json'
  args = [
    sys.executable,
    'tools/conv_kernels.py',
    '--config=configs/smoke.py',
    '--config.data.image_size=32',
    '--config.model.base_width=2',
    '--batch_size=2',
    '--steps=1',
    '--warmup=0',
    '--torch',
    f'--output={output}',
  ]
  done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert 'ms of convolutions per train step' in done.stdout
  report = json.loads(output.read_text())
  libraries = report['libraries']
  assert libraries[0] == 'xla'
  for layer in report['layers']:
    for library in libraries:
      assert set(layer[library]) == set(benchmarking.CONV_PASSES)
  for library in libraries:
    total = report['totals_ms'][library]
    assert total['all'] == pytest.approx(sum(total[p] for p in benchmarking.CONV_PASSES))
  try:
    import torch  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    assert libraries == ['xla']
  else:
    assert libraries == ['xla', 'torch'] and 'XLA / PyTorch time' in done.stdout
