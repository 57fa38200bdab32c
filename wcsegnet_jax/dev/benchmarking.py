"""How fast the train and inference steps run, against ceilings measured in the same run.

Every timing is the MEDIAN over `steps` calls after `warmup` untimed ones, each call waited on
with `jax.block_until_ready`, so a step's time is the device's time for it plus one dispatch.
Compilation is timed apart, lowering (tracing to StableHLO) and compiling (XLA) separately.

Model FLOPs utilisation (MFU) = XLA's FLOP count of the compiled step / median step time / the
device's peak, where the peak is a large matrix product timed in the same process (not a data
sheet): bf16 on accelerators, float32 on CPU, where bf16 is emulated and slower than float32.
`mfu_datasheet` is the same FLOP rate over the vendor's dense bf16 peak for the device kind
(`DATASHEET_BF16_DENSE_TFLOPS`; None for kinds not in the table, CPUs among them).
The model timings use synthetic batches already on the device (no data, no host->device copy);
`benchmark_input` times the real augmented input pipeline alone.

Nothing here prints; tools/benchmark.py is the command-line front.
"""

import datetime
import functools
import os
import platform
import time
from typing import Any, Callable, Sequence

import flax
import jax
import jax.numpy as jnp
import jaxlib
import ml_collections
import numpy as np
import optax

from wcsegnet_jax.core import classes
from wcsegnet_jax.data import input_pipeline
from wcsegnet_jax.evaluation import reports
from wcsegnet_jax.model import decoding
from wcsegnet_jax.model import models
from wcsegnet_jax.model import probabilities
from wcsegnet_jax.training import train

# Sizes of the ceiling measurements by platform: large enough to saturate the device, small
# enough to take well under a second. CPU: a 1024 float32 product is ~2 GFLOP, 64 MiB is past
# any cache. GPU: an 8192 bf16 product is ~1.1 TFLOP (~1.5 ms on an H100), 1 GiB is ~0.5 ms.
MATMUL_DEFAULTS = {'cpu': (1024, 'float32')}
MATMUL_ACCELERATOR_DEFAULT = (8192, 'bfloat16')
BANDWIDTH_DEFAULT_BYTES = {'cpu': 64 * 2**20}
BANDWIDTH_ACCELERATOR_DEFAULT_BYTES = 2**30

# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's data sheets, TFLOP/s. The SXM and
# PCIe H100 differ by a third; JAX's device_kind never says "SXM" ('NVIDIA H100 80GB HBM3' is
# the SXM part, 'NVIDIA H100 PCIe' the PCIe one), hence `datasheet_peak`'s matching.
DATASHEET_BF16_DENSE_TFLOPS = {'H100 SXM': 989.0, 'H100 PCIe': 756.0, 'H200': 989.0, 'A100': 312.0}


# --- Timing ---------------------------------------------------------------------------------------


def timing_stats(seconds: Sequence[float]) -> dict[str, float]:
  """Median and spread of per-step times; the one definition for JAX and PyTorch alike."""
  ms = np.asarray(seconds, np.float64) * 1e3
  return {
    'median_ms': float(np.median(ms)),
    'p10_ms': float(np.percentile(ms, 10)),
    'p90_ms': float(np.percentile(ms, 90)),
    'min_ms': float(ms.min()),
    'steps': int(ms.size),
  }


def timed_steps(step: Callable[[], Any], steps: int, warmup: int) -> dict[str, float]:
  """Calls `step` `warmup` times untimed, then `steps` times timed; `step` must block."""
  if steps < 1:
    raise ValueError(f'steps must be >= 1, got {steps}')
  for _ in range(warmup):
    step()
  seconds = []
  for _ in range(steps):
    start = time.perf_counter()
    step()
    seconds.append(time.perf_counter() - start)
  return {**timing_stats(seconds), 'warmup': int(warmup)}


def _cost(analysis) -> dict:
  # jax < 0.4.30 returned one dict per device; newer jax returns one dict (or None on some
  # backends).
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  return analysis or {}


def _memory_analysis(compiled) -> dict[str, int] | None:
  """The executable's static buffer sizes (bytes); per executable, unlike the device's peak."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except   # not every backend implements it
    return None
  if m is None:
    return None
  keys = (
    'argument_size_in_bytes',
    'output_size_in_bytes',
    'alias_size_in_bytes',
    'temp_size_in_bytes',
    'generated_code_size_in_bytes',
  )
  return {k: int(getattr(m, k)) for k in keys if hasattr(m, k)}


def time_fn(
  fn: Callable,
  args: Sequence[Any],
  steps: int,
  warmup: int,
  *,
  next_args: Callable[[tuple, Any], tuple] | None = None,
) -> dict:
  """Compiles `fn` for `args` and times it.

  Args:
    fn: a function, jitted or not (it is jitted here if not). May donate its arguments.
    args: its positional arguments (arrays already on the device).
    steps, warmup: timed and untimed calls after compilation.
    next_args: (args, output) -> the next call's args, for steps that thread state (a train
      step donating its state); default: the same args every call.

  Returns:
    median_ms, p10_ms, p90_ms, min_ms, steps, warmup; lower_s and compile_s (the first call's
    compilation, lowering and XLA apart); flops (XLA's count for the compiled executable,
    None where the backend gives none) and flops_lowered (the count before XLA's
    optimisations); memory (the executable's static buffer sizes in bytes, or None).
  """
  jitted = fn if hasattr(fn, 'lower') else jax.jit(fn)
  start = time.perf_counter()
  lowered = jitted.lower(*args)
  lower_s = time.perf_counter() - start
  start = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start

  current = tuple(args)

  def step():
    nonlocal current
    out = jax.block_until_ready(compiled(*current))
    if next_args is not None:
      current = tuple(next_args(current, out))

  result = timed_steps(step, steps, warmup)
  flops = _cost(compiled.cost_analysis()).get('flops')
  flops_lowered = _cost(lowered.cost_analysis()).get('flops')
  return {
    **result,
    'lower_s': lower_s,
    'compile_s': compile_s,
    'flops': float(flops) if flops else None,
    'flops_lowered': float(flops_lowered) if flops_lowered else None,
    'memory': _memory_analysis(compiled),
  }


# --- Device ceilings ------------------------------------------------------------------------------


def _platform(device=None) -> str:
  return (device or jax.devices()[0]).platform


def matmul_peak_flops(
  size: int | None = None,
  dtype: str | None = None,
  *,
  steps: int = 20,
  warmup: int = 3,
  device=None,
) -> dict:
  """The device's attainable FLOP/s: one size x size matrix product, 2 * size**3 FLOPs.

  Defaults by platform: 8192 bf16 on GPU/TPU, 1024 float32 on CPU (bf16 is emulated there).
  Returns flops_per_s, size, dtype, flops, and the timing.
  """
  device = device or jax.devices()[0]
  default = MATMUL_DEFAULTS.get(_platform(device), MATMUL_ACCELERATOR_DEFAULT)
  size, dtype = size or default[0], dtype or default[1]
  ka, kb = jax.random.split(jax.random.key(0))
  a = jax.device_put(jax.random.normal(ka, (size, size), dtype), device)
  b = jax.device_put(jax.random.normal(kb, (size, size), dtype), device)
  timing = time_fn(jnp.matmul, (a, b), steps, warmup)
  flops = 2.0 * size**3
  return {
    'flops_per_s': flops / (timing['median_ms'] / 1e3),
    'size': int(size),
    'dtype': str(jnp.dtype(dtype)),
    'flops': flops,
    **{k: timing[k] for k in ('median_ms', 'p10_ms', 'p90_ms', 'steps', 'compile_s')},
  }


def memory_bandwidth(
  num_bytes: int | None = None, *, steps: int = 20, warmup: int = 3, device=None
) -> dict:
  """The device's attainable memory bandwidth: `x + 1` in place on a float32 array of `num_bytes`.

  Each call reads and writes the array once: 2 * num_bytes moved. Defaults: 64 MiB on CPU,
  1 GiB on accelerators. Returns bytes_per_s, num_bytes, bytes_moved and the timing.
  """
  device = device or jax.devices()[0]
  if num_bytes is None:
    num_bytes = BANDWIDTH_DEFAULT_BYTES.get(_platform(device), BANDWIDTH_ACCELERATOR_DEFAULT_BYTES)
  n = int(num_bytes) // 4
  x = jax.device_put(jnp.zeros((n,), jnp.float32), device)
  # Donated and threaded through: the output reuses the input's buffer. Without, each call
  # allocates a fresh array and, on CPU, first-touch page faults cost more than the copy itself.
  add_one = jax.jit(lambda v: v + 1.0, donate_argnums=0)
  timing = time_fn(add_one, (x,), steps, warmup, next_args=lambda args, out: (out,))
  moved = 2.0 * 4 * n
  return {
    'bytes_per_s': moved / (timing['median_ms'] / 1e3),
    'num_bytes': 4 * n,
    'bytes_moved': moved,
    'dtype': 'float32',
    **{k: timing[k] for k in ('median_ms', 'p10_ms', 'p90_ms', 'steps', 'compile_s')},
  }


def datasheet_peak(device_kind: str) -> dict | None:
  """The data-sheet dense bf16 peak of a device kind: {'name', 'bf16_dense_flops_per_s',
  'device_kind'}, or None where the table has no entry (CPUs, GH200, the NVL parts, others)."""
  kind = device_kind.lower()
  if 'nvl' in kind or 'gh200' in kind:  # other clocks and power than the parts in the table
    return None
  if 'h100' in kind:
    name = 'H100 PCIe' if 'pcie' in kind else 'H100 SXM'
  elif 'h200' in kind:
    name = 'H200'
  elif 'a100' in kind:
    name = 'A100'
  else:
    return None
  return {
    'name': name,
    'bf16_dense_flops_per_s': DATASHEET_BF16_DENSE_TFLOPS[name] * 1e12,
    'device_kind': device_kind,
  }


def peak_bytes_in_use(device=None) -> int | None:
  """The device allocator's peak since the process started (None where unreported: CPU).

  There is no reset: within one process it is the running maximum over everything run so far.
  """
  device = device or jax.devices()[0]
  try:
    stats = device.memory_stats()
  except Exception:  # pylint: disable=broad-except
    return None
  if not stats or 'peak_bytes_in_use' not in stats:
    return None
  return int(stats['peak_bytes_in_use'])


# --- Model FLOPs: XLA's count and by hand -------------------------------------------------------


def model_flops_per_image(model: flax.linen.Module, height: int, width: int) -> float:
  """Forward FLOPs of one image at eval, from XLA's cost analysis of the lowered graph.

  A multiply-add counts 2; taps falling on a conv's zero padding are not counted. Nothing is run
  or allocated: the variables and the image are abstract shapes. The paper model at 120x120
  (padded to 128x128) is about 46.2 GFLOPs.
  """
  images = jax.ShapeDtypeStruct((1, height, width, 3), jnp.float32)
  variables = jax.eval_shape(
    lambda: model.init(jax.random.key(0), jnp.zeros(images.shape), train=False)
  )
  lowered = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, images)
  return float(_cost(lowered.cost_analysis())['flops'])


def _conv_taps(size: int, kernel: int) -> int:
  """Kernel taps inside a SAME-padded axis of `size`, summed over the outputs (odd kernel)."""
  half = kernel // 2
  return sum(min(i + half, size - 1) - max(i - half, 0) + 1 for i in range(size))


def conv_flops_per_image(
  model_config: ml_collections.ConfigDict,
  height: int,
  width: int,
  *,
  num_classes: int = classes.PAPER_TABLE.num_classes,
  count_padding_taps: bool = True,
) -> dict[str, float]:
  """Forward FLOPs of the convolutions of one image, by hand (2 per multiply-add).

  The input is padded to a multiple of 2**num_levels first, as the model does. A k x k SAME
  conv costs 2 * k * k * cin * cout * H * W with `count_padding_taps`; without, only the taps
  that land inside the image are counted (XLA's convention). Elementwise work (activations,
  adds, pooling, BatchNorm, softmax) is left out. Returns {'total': ..., per-part subtotals}.
  """
  m = model_config
  multiple = 2**m.num_levels
  h, w = height + (-height % multiple), width + (-width % multiple)
  parts: dict[str, float] = {}

  def conv(part, k, cin, cout, hh, ww):
    taps = k * k * hh * ww if count_padding_taps else _conv_taps(hh, k) * _conv_taps(ww, k)
    parts[part] = parts.get(part, 0.0) + 2.0 * taps * cin * cout

  def stage(part, cin, features, hh, ww):
    for _ in range(m.blocks_per_stage):
      conv(part, 3, cin, features, hh, ww)
      conv(part, 3, features, features, hh, ww)
      if m.residual and cin != features:
        conv(part, 1, cin, features, hh, ww)
      cin = features
    return cin

  width_at = lambda level: m.base_width * 2**level
  cin = 3
  for level in range(m.num_levels):
    cin = stage(f'encoder{level}', cin, width_at(level), h >> level, w >> level)
  cin = stage('bottleneck', cin, width_at(m.num_levels), h >> m.num_levels, w >> m.num_levels)
  for i, level in enumerate(reversed(range(m.num_levels))):
    hh, ww, features = h >> level, w >> level, width_at(level)
    if m.upsample == 'transpose':
      # 2x2 stride 2: each input pixel feeds 4 output pixels once, 2*cin*cout per output pixel.
      parts[f'decoder{i}'] = 2.0 * cin * features * hh * ww
      cin = features
    cin = stage(f'decoder{i}', features + cin, features, hh, ww)
  conv('head', 3, cin, m.base_width, h, w)
  conv('head', 1, m.base_width, num_classes, h, w)
  return {'total': sum(parts.values()), **parts}


# --- Steps ----------------------------------------------------------------------------------------


def with_overrides(
  config: ml_collections.ConfigDict, **model_overrides
) -> ml_collections.ConfigDict:
  """A copy of `config` with some `config.model` fields changed (the caller's is untouched)."""
  config = config.copy_and_resolve_references()
  for key, value in model_overrides.items():
    setattr(config.model, key, value)
  return config


def synthetic_batch(
  config: ml_collections.ConfigDict, batch_size: int, seed: int = 0, device=None
) -> dict[str, jax.Array]:
  """Random uint8 images and label maps of the configured size, placed on the device."""
  rng = np.random.default_rng(seed)
  size = config.data.image_size
  batch = {
    'image': rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8),
    'label_map': rng.integers(
      0, classes.table_of(config.data).num_classes, (batch_size, size, size), dtype=np.uint8
    ),
  }
  return jax.device_put(batch, device or jax.devices()[0])


def _summary(timing: dict, batch_size: int, peak_flops_per_s: float | None, device) -> dict:
  """Throughput, FLOP rate, MFU and memory of one timed step."""
  seconds = timing['median_ms'] / 1e3
  # XLA's count of the compiled executable, as MFU is usually defined; the count before its
  # optimisations where a backend leaves library calls (convolutions) out of the compiled count.
  compiled, lowered = timing['flops'], timing['flops_lowered']
  use_compiled = bool(compiled) and not (lowered and compiled < 0.5 * lowered)
  flops = compiled if use_compiled else lowered
  achieved = flops / seconds if flops else None
  datasheet = datasheet_peak(device.device_kind)
  return {
    'images_per_s': batch_size / seconds,
    'ms_per_step': timing['median_ms'],
    'flops_per_step': flops,
    'flops_per_image': flops / batch_size if flops else None,
    'flops_source': 'compiled' if use_compiled else 'lowered',
    'flops_per_s': achieved,
    'mfu': achieved / peak_flops_per_s if achieved and peak_flops_per_s else None,
    # Against the bf16 peak for every dtype: float32 steps (TF32 convolutions) score lower.
    'mfu_datasheet': (
      achieved / datasheet['bf16_dense_flops_per_s'] if achieved and datasheet else None
    ),
    'peak_bytes_in_use': peak_bytes_in_use(device),
    'timing': timing,
  }


def initial_state(config: ml_collections.ConfigDict, model, tx, device) -> train.TrainState:
  """The train state as training creates it, on `device`."""
  init = functools.partial(train.create_train_state, config, model, tx=tx)
  return jax.jit(init, out_shardings=jax.sharding.SingleDeviceSharding(device))(config.seed)


def benchmark_train_step(
  config: ml_collections.ConfigDict,
  batch_size: int,
  dtype: str,
  steps: int,
  warmup: int,
  *,
  peak_flops_per_s: float | None = None,
  device=None,
) -> dict:
  """Times `train.train_step` (forward, backward, Adam) on synthetic batches on one device.

  The state is donated and threaded through the steps, as in training. `peak_flops_per_s`
  (from `matmul_peak_flops`) is measured here when not given.
  """
  device = device or jax.devices()[0]
  config = with_overrides(config, dtype=dtype)
  if peak_flops_per_s is None:
    peak_flops_per_s = matmul_peak_flops(device=device)['flops_per_s']
  model = models.model_for(config)
  tx = train.make_optimizer(config.train, 1, steps + warmup)
  state = initial_state(config, model, tx, device)
  batch = synthetic_batch(config, batch_size, config.seed, device)
  step = jax.jit(train.make_train_step(config), donate_argnums=0)
  num_params = models.count_params(state.params)
  timing = time_fn(
    step, (state, batch), steps, warmup, next_args=lambda args, out: (out[0], args[1])
  )
  return {
    'mode': 'train',
    'batch_size': int(batch_size),
    'dtype': dtype,
    'image_size': int(config.data.image_size),
    'num_params': num_params,
    **_summary(timing, batch_size, peak_flops_per_s, device),
  }


def benchmark_inference(
  config: ml_collections.ConfigDict,
  batch_size: int,
  dtype: str,
  steps: int,
  warmup: int,
  *,
  peak_flops_per_s: float | None = None,
  device=None,
) -> dict:
  """Times prediction (normalise, forward at eval, softmax, decoding; `config.eval.tta` and
  `config.eval.decode` honoured)."""
  device = device or jax.devices()[0]
  config = with_overrides(config, dtype=dtype)
  if peak_flops_per_s is None:
    peak_flops_per_s = matmul_peak_flops(device=device)['flops_per_s']
  model = models.model_for(config)
  size = config.data.image_size
  table = classes.table_of(config.data)
  variables = train.variables_of(
    initial_state(config, model, train.make_optimizer(config.train, 1, 1), device)
  )

  def predict(variables, images):
    probs = probabilities.predict_probs(
      model, variables, images, config.data, config.eval.tta, config.eval.tta_rotations
    )
    return decoding.decode(probs, table, config.eval.decode).astype(jnp.uint8)

  images = synthetic_batch(config, batch_size, config.seed, device)['image']
  timing = time_fn(predict, (variables, images), steps, warmup)
  return {
    'mode': 'infer',
    'batch_size': int(batch_size),
    'dtype': dtype,
    'image_size': int(size),
    'num_params': models.count_params(variables['params']),
    **_summary(timing, batch_size, peak_flops_per_s, device),
  }


def benchmark_input(
  config: ml_collections.ConfigDict,
  num_workers: int,
  num_batches: int,
  *,
  warmup_batches: int = 3,
  datasets=None,
) -> float:
  """Augmented training images per second from the input pipeline alone (no model).

  `num_workers` grain worker processes (0: in this process), `config.input.read_threads`
  threads each. The first `warmup_batches` (worker start-up, file opening) are not timed.
  `datasets` (from `input_pipeline.load_datasets`) saves reopening them between calls.
  """
  config = config.copy_and_resolve_references()
  config.input.num_workers = int(num_workers)
  datasets = datasets if datasets is not None else input_pipeline.load_datasets(config.data)
  it = iter(input_pipeline.train_dataset(datasets, config))
  try:
    for _ in range(warmup_batches):
      next(it)
    start = time.perf_counter()
    for _ in range(num_batches):
      next(it)
    seconds = time.perf_counter() - start
  finally:
    del it  # stops the worker processes
  return num_batches * config.train.batch_size / seconds


# --- Convolutions, one by one ---------------------------------------------------------------------

CONV_PASSES = ('forward', 'input_grad', 'kernel_grad')


def conv_layers(config: ml_collections.ConfigDict, batch_size: int) -> list[dict]:
  """Every distinct `nn.Conv` the model applies to a batch, with how many times it occurs.

  Read off a shape-only trace of the model (nothing is computed): input shape, output
  features, kernel size, strides and padding, as the step runs them.
  """
  model = models.model_for(config)
  size = config.data.image_size
  seen: dict[tuple, int] = {}

  def record(next_fun, args, kwargs, context):
    module = context.module
    if isinstance(module, flax.linen.Conv) and context.method_name == '__call__':
      strides = module.strides or 1
      strides = (strides,) * 2 if isinstance(strides, int) else tuple(strides)
      key = (
        tuple(args[0].shape),
        int(module.features),
        tuple(module.kernel_size),
        strides,
        _padding_key(module.padding),
      )
      seen[key] = seen.get(key, 0) + 1
    return next_fun(*args, **kwargs)

  images = jnp.zeros((batch_size, size, size, 3), jnp.float32)
  with flax.linen.intercept_methods(record):
    jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)
  return [
    {
      'input_shape': list(shape),
      'features': features,
      'kernel_size': list(kernel),
      'strides': list(strides),
      'padding': padding,
      'count': count,
    }
    for (shape, features, kernel, strides, padding), count in seen.items()
  ]


def _padding_key(padding) -> str | tuple:
  """Flax's `padding` in a form `lax.conv_general_dilated` takes and a dict key can hold."""
  if isinstance(padding, str):
    return padding
  if isinstance(padding, int):
    return ((padding, padding),) * 2
  return tuple((p, p) if isinstance(p, int) else tuple(p) for p in padding)


def conv_flops(layer: dict) -> float:
  """Multiply-adds x 2 of one forward pass of `layer` (each gradient pass costs the same)."""
  batch, height, width, channels = layer['input_shape']
  out_h, out_w = (-(-n // s) for n, s in zip((height, width), layer['strides']))
  taps = int(np.prod(layer['kernel_size']))
  return 2.0 * batch * out_h * out_w * taps * channels * layer['features']


def benchmark_conv(
  layer: dict, steps: int, warmup: int, dtype: str = 'float32', device=None
) -> dict[str, float]:
  """Median ms of one conv's forward, input-gradient and kernel-gradient passes, each jitted
  alone, as XLA compiles them inside the train step (same shapes, NHWC, HWIO kernels)."""
  device = device or jax.devices()[0]
  rng = np.random.default_rng(0)
  batch, height, width, channels = layer['input_shape']
  kernel_shape = (*layer['kernel_size'], channels, layer['features'])
  x = jax.device_put(jnp.asarray(rng.normal(size=layer['input_shape']), dtype), device)
  kernel = jax.device_put(jnp.asarray(rng.normal(size=kernel_shape) * 0.1, dtype), device)

  def conv(x, kernel):
    return jax.lax.conv_general_dilated(
      x,
      kernel,
      tuple(layer['strides']),
      layer['padding'],
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
    )

  dy = jax.device_put(jnp.ones(jax.eval_shape(conv, x, kernel).shape, dtype), device)
  passes = {
    'forward': (conv, (x, kernel)),
    'input_grad': (lambda k, g: jax.vjp(lambda x_: conv(x_, k), x)[1](g)[0], (kernel, dy)),
    'kernel_grad': (lambda x_, g: jax.vjp(lambda k: conv(x_, k), kernel)[1](g)[0], (x, dy)),
  }
  return {
    name: time_fn(fn, args, steps, warmup)['median_ms'] for name, (fn, args) in passes.items()
  }


# --- Reports --------------------------------------------------------------------------------------


def environment(device=None) -> dict[str, Any]:
  """What the numbers were measured on: device, platform, library versions, date (UTC)."""
  device = device or jax.devices()[0]
  return {
    'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
    'device_kind': device.device_kind,
    'platform': device.platform,
    'device_count': jax.device_count(),
    'cpu_count': os.cpu_count(),
    'python': platform.python_version(),
    'jax': jax.__version__,
    'jaxlib': jaxlib.__version__,
    'flax': flax.__version__,
    'optax': optax.__version__,
    'numpy': np.__version__,
    # Other work on the machine skews CPU timings (PyTorch's OpenMP threads most of all).
    'load_average_1min': os.getloadavg()[0] if hasattr(os, 'getloadavg') else None,
    'env': {
      k: os.environ[k]
      for k in ('XLA_FLAGS', 'XLA_PYTHON_CLIENT_PREALLOCATE', 'XLA_PYTHON_CLIENT_MEM_FRACTION')
      if k in os.environ
    },
  }


def model_flops(config: ml_collections.ConfigDict) -> dict[str, float]:
  """Forward FLOPs of one image at the configured size: XLA's count and the hand counts."""
  size = config.data.image_size
  num_classes = classes.table_of(config.data).num_classes
  model = models.create_model(config.model, num_classes)
  return {
    'image_size': int(size),
    'forward_xla': model_flops_per_image(model, size, size),
    'forward_convs_dense': conv_flops_per_image(config.model, size, size, num_classes=num_classes)[
      'total'
    ],
    'forward_convs_exact': conv_flops_per_image(
      config.model, size, size, num_classes=num_classes, count_padding_taps=False
    )['total'],
  }


def add_torch_flops(
  results: Sequence[dict],
  peak_flops_per_s: float | None,
  datasheet_flops_per_s: float | None = None,
) -> None:
  """Gives each PyTorch row the FLOPs XLA counted for the same JAX step, hence its MFUs.

  The two models are the same network (equal parameter counts), so the same work per image.
  """
  jax_rows = {
    (r['mode'], r['batch_size'], r['dtype']): r
    for r in results
    if r.get('flops_per_image') and 'dtype' in r
  }
  for r in results:
    if not r['mode'].startswith('torch_') or 'images_per_s' not in r:
      continue
    twin = jax_rows.get((r['mode'][len('torch_') :], r['batch_size'], r['dtype']))
    if twin is not None:
      r['flops_per_image'] = twin['flops_per_image']
      r['flops_per_s'] = twin['flops_per_image'] * r['images_per_s']
      r['mfu'] = r['flops_per_s'] / peak_flops_per_s if peak_flops_per_s else None
      r['mfu_datasheet'] = (
        r['flops_per_s'] / datasheet_flops_per_s if datasheet_flops_per_s else None
      )


def speed_ratios(results: Sequence[dict]) -> list[dict]:
  """JAX over PyTorch images/s for every (mode, batch size, dtype) measured by both."""
  by_key = {
    (r['mode'], r['batch_size'], r['dtype']): r
    for r in results
    if 'images_per_s' in r and 'dtype' in r
  }
  ratios = []
  for (mode, batch_size, dtype), r in by_key.items():
    other = by_key.get((f'torch_{mode}', batch_size, dtype))
    if other is not None:
      ratios.append(
        {
          'mode': mode,
          'batch_size': batch_size,
          'dtype': dtype,
          'jax_images_per_s': r['images_per_s'],
          'torch_images_per_s': other['images_per_s'],
          'jax_over_torch': r['images_per_s'] / other['images_per_s'],
        }
      )
  return ratios


def _fmt(value, width: int, scale: float = 1.0) -> str:
  """`value / scale` right-aligned in `width`, with ~4 significant digits; '-' for None."""
  scaled = None if value is None else value / scale
  return reports.format_number(scaled, digits=None, missing='-').rjust(width)


def format_report(report: dict) -> str:
  """The report of tools/benchmark.py as text tables."""
  env, lines = report['environment'], []
  lines.append(f'{env["device_kind"]} ({env["platform"]}), jax {env["jax"]}, {env["date"]}')
  mm, bw = report['ceilings'].get('matmul'), report['ceilings'].get('memory_bandwidth')
  if mm:
    lines.append(
      f'matmul peak: {mm["flops_per_s"] / 1e12:.3f} TFLOP/s '
      f'({mm["size"]}x{mm["size"]} {mm["dtype"]}, {mm["median_ms"]:.2f} ms)'
    )
  if bw:
    lines.append(
      f'memory bandwidth: {bw["bytes_per_s"] / 1e9:.1f} GB/s '
      f'({bw["num_bytes"] / 2**20:.0f} MiB x+1 in place, {bw["median_ms"]:.2f} ms)'
    )
  if 'datasheet' in report['ceilings']:
    ds = report['ceilings']['datasheet']
    lines.append(
      f'data-sheet dense bf16 peak: {ds["bf16_dense_flops_per_s"] / 1e12:.0f} TFLOP/s '
      f'({ds["name"]}; MFU ds)'
      if ds
      else f"data-sheet dense bf16 peak: none for {env['device_kind']!r} (MFU ds '-')"
    )
  f = report.get('model_flops')
  if f:
    lines.append(
      f'forward GFLOP/image at {f["image_size"]}: XLA {_fmt(f["forward_xla"], 0, 1e9)}, '
      f'convs by hand {_fmt(f["forward_convs_exact"], 0, 1e9)} (inside the image) / '
      f'{_fmt(f["forward_convs_dense"], 0, 1e9)} (all taps)'
    )
  header = (
    f'{"mode":<12}{"batch":>6} {"dtype":<9}{"images/s":>10}{"ms/step":>10}'
    f'{"p10 ms":>10}{"p90 ms":>10}{"compile s":>10}{"GFLOP/img":>10}{"TFLOP/s":>9}'
    f'{"MFU":>7}{"MFU ds":>7}{"peak MiB":>10}'
  )
  rows = [r for r in report['results'] if r['mode'] != 'input']
  if rows:
    lines += ['', header, '-' * len(header)]
  for r in rows:
    if 'error' in r or 'skipped' in r:
      why = r['error'] if 'error' in r else f'skipped: {r["skipped"]}'
      lines.append(f'{r["mode"]:<12}{r["batch_size"]:>6} {r["dtype"]:<9}  {why[:90]}')
      continue
    t = r['timing']
    # JAX: lowering + XLA compilation; PyTorch: the first step (torch.compile's, if on).
    compile_s = t['lower_s'] + t['compile_s'] if 'lower_s' in t else t.get('first_step_s')
    lines.append(
      f'{r["mode"]:<12}{r["batch_size"]:>6} {r["dtype"]:<9}{_fmt(r["images_per_s"], 10)}'
      f'{_fmt(r["ms_per_step"], 10)}{_fmt(t["p10_ms"], 10)}{_fmt(t["p90_ms"], 10)}'
      f'{_fmt(compile_s, 10)}{_fmt(r.get("flops_per_image"), 10, 1e9)}'
      f'{_fmt(r.get("flops_per_s"), 9, 1e12)}{_fmt(r.get("mfu"), 7)}'
      f'{_fmt(r.get("mfu_datasheet"), 7)}'
      f'{_fmt(r.get("peak_bytes_in_use"), 10, 2**20)}'
    )
  inputs = [r for r in report['results'] if r['mode'] == 'input']
  if inputs:
    lines += ['', f'{"input workers":<14}{"batch":>6}{"images/s":>10}']
    for r in inputs:
      value = (
        _fmt(r['images_per_s'], 10)
        if 'images_per_s' in r
        else '  ' + r.get('error', f'skipped: {r.get("skipped")}')[:90]
      )
      lines.append(f'{r["num_workers"]:<14}{r["batch_size"]:>6}{value}')
  for ratio in report.get('ratios', []):
    lines.append(
      f'JAX/PyTorch {ratio["mode"]} batch {ratio["batch_size"]} {ratio["dtype"]}: '
      f'{ratio["jax_over_torch"]:.2f}x ({_fmt(ratio["jax_images_per_s"], 0)} vs '
      f'{_fmt(ratio["torch_images_per_s"], 0)} images/s)'
    )
  for note in report.get('notes', []):
    lines.append(f'note: {note}')
  return '\n'.join(lines)
