"""WCSegNet in PyTorch, written the way a careful PyTorch user would, to time against ours.

Same architecture as `wcsegnet_jax.models` for any `config.model` (the parameter counts match,
which tests/test_benchmarking.py checks), trained the same way: uint8 batches normalised on the
device, Adam, pixel cross-entropy. Written for speed as PyTorch users do: channels_last memory
format, bf16 autocast (parameters stay float32, as ours), `torch.compile`, fused Adam,
`zero_grad(set_to_none=True)`, `cudnn.benchmark` on GPUs.

Only tools/benchmark.py imports this module, and only when asked for the torch modes: PyTorch is
an optional dependency of the benchmark, not of the project. Initialisation follows PyTorch's
defaults (not Flax's LeCun normal) and BatchNorm's momentum is 1 - config.model.bn_momentum
(PyTorch counts it the other way);
neither changes the speed.
"""

import gc
import time
from typing import Any

import ml_collections
import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from wcsegnet_jax.core import classes
from wcsegnet_jax.dev import benchmarking


class ConvBlock(nn.Module):
  """conv3x3 -> act -> conv3x3 -> + input (1x1 projection if widths differ) -> act."""

  def __init__(self, in_features: int, features: int, m: ml_collections.ConfigDict):
    super().__init__()
    batch_norm = m.block_norm == 'batch'
    self.conv1 = nn.Conv2d(in_features, features, 3, padding=1, bias=not batch_norm)
    self.conv2 = nn.Conv2d(features, features, 3, padding=1, bias=not batch_norm)
    norm = lambda: (
      nn.BatchNorm2d(features, momentum=1 - m.bn_momentum) if batch_norm else nn.Identity()
    )
    self.norm1, self.norm2 = norm(), norm()
    self.residual = m.residual
    self.proj = (
      nn.Conv2d(in_features, features, 1)
      if m.residual and in_features != features
      else nn.Identity()
    )
    self.act = _activation(m)

  def forward(self, x):
    y = self.act(self.norm1(self.conv1(x)))
    y = self.norm2(self.conv2(y))
    if self.residual:
      y = y + self.proj(x)
    return self.act(y)


def _activation(m: ml_collections.ConfigDict) -> nn.Module:
  if m.activation == 'relu':
    return nn.ReLU(inplace=True)
  return nn.LeakyReLU(m.leaky_relu_slope, inplace=True)


def _stage(in_features: int, features: int, m: ml_collections.ConfigDict) -> nn.Sequential:
  return nn.Sequential(
    *[
      ConvBlock(in_features if i == 0 else features, features, m) for i in range(m.blocks_per_stage)
    ]
  )


class WCSegNet(nn.Module):
  """(B, 3, H, W) normalised images -> (B, num_classes, H, W) float32 logits."""

  def __init__(self, m: ml_collections.ConfigDict, num_classes: int):
    super().__init__()
    self.num_levels, self.pad_mode, self.upsample = m.num_levels, m.pad_mode, m.upsample
    self.patch_size = m.patch_size
    width_at = lambda level: m.base_width * 2**level
    self.encoders = nn.ModuleList()
    cin = 3 * m.patch_size**2  # pixel_unshuffle folds p x p patches into channels
    for level in range(m.num_levels):
      self.encoders.append(_stage(cin, width_at(level), m))
      cin = width_at(level)
    self.encoder_dropout = nn.Dropout(m.encoder_dropout)  # after the deepest encoder stage
    self.bottleneck = _stage(cin, width_at(m.num_levels), m)
    cin = width_at(m.num_levels)
    self.ups, self.decoders, self.decoder_dropouts = nn.ModuleList(), nn.ModuleList(), []
    for stage, level in enumerate(reversed(range(m.num_levels))):
      features = width_at(level)
      if m.upsample == 'transpose':
        self.ups.append(nn.ConvTranspose2d(cin, features, 2, stride=2))
        cin = features
      else:
        self.ups.append(nn.Upsample(scale_factor=2, mode='nearest'))
      self.decoders.append(_stage(features + cin, features, m))
      self.decoder_dropouts.append(
        m.decoder_dropout if stage in tuple(m.decoder_dropout_stages) else 0.0
      )
      cin = features
    self.head = nn.Sequential(
      nn.Conv2d(cin, m.base_width, 3, padding=1, bias=False),
      nn.BatchNorm2d(m.base_width, momentum=1 - m.bn_momentum),
      _activation(m),
      nn.Dropout(m.head_dropout),
    )
    self.logits = nn.Conv2d(m.base_width, num_classes * m.patch_size**2, 1)

  def forward(self, x):
    _, _, height, width = x.shape
    multiple = 2**self.num_levels * self.patch_size
    top, left = (-height % multiple) // 2, (-width % multiple) // 2
    x = F.pad(
      x, (left, -width % multiple - left, top, -height % multiple - top), mode=self.pad_mode
    )
    if self.patch_size > 1:
      x = F.pixel_unshuffle(x, self.patch_size)
    skips = []
    for level, encoder in enumerate(self.encoders):
      x = encoder(x)
      if level == self.num_levels - 1:
        x = self.encoder_dropout(x)
      skips.append(x)
      x = F.max_pool2d(x, 2)
    x = self.bottleneck(x)
    for up, decoder, p, skip in zip(
      self.ups, self.decoders, self.decoder_dropouts, reversed(skips)
    ):
      x = decoder(torch.cat([skip, up(x)], dim=1))  # skip first, as ours
      x = F.dropout(x, p, self.training) if p else x
    x = self.head(x)
    with torch.autocast(x.device.type, enabled=False):  # float32 logits conv, as ours
      logits = self.logits(x.float())
    if self.patch_size > 1:
      logits = F.pixel_shuffle(logits, self.patch_size)
    return logits[:, :, top : top + height, left : left + width]


def build_model(
  model_config: ml_collections.ConfigDict, num_classes: int = classes.PAPER_TABLE.num_classes
) -> WCSegNet:
  return WCSegNet(model_config, num_classes)


def count_params(module: nn.Module) -> int:
  """Trainable scalars (BatchNorm's running statistics are buffers, as Flax's batch_stats)."""
  return sum(p.numel() for p in module.parameters())


def default_device() -> torch.device:
  return torch.device('cuda' if torch.cuda.is_available() else 'cpu')


def release_memory() -> None:
  """Hands the caching allocator's free GPU memory back, for JAX to use after us."""
  gc.collect()
  if torch.cuda.is_available():
    torch.cuda.empty_cache()


def _synchronize(device: torch.device) -> None:
  if device.type == 'cuda':
    torch.cuda.synchronize(device)


def _normalize(images_uint8, mean, std):
  """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 standardised; channels_last by construction."""
  x = images_uint8.permute(0, 3, 1, 2).float()
  mean = torch.tensor(mean, device=x.device).view(1, 3, 1, 1) * 255.0
  scale = 1.0 / (torch.tensor(std, device=x.device).view(1, 3, 1, 1) * 255.0)
  return ((x - mean) * scale).contiguous(memory_format=torch.channels_last)


def _setup(config, batch_size, dtype, device, use_compile):
  device = device or default_device()
  # Fixed shapes: let cuDNN try its algorithms once and keep the fastest, as XLA autotunes.
  # float32 convolutions use TF32 on recent GPUs by both libraries' defaults; left as they are.
  torch.backends.cudnn.benchmark = True
  torch.manual_seed(config.seed)
  num_classes = classes.table_of(config.data).num_classes
  model = build_model(config.model, num_classes).to(device, memory_format=torch.channels_last)
  rng = np.random.default_rng(config.seed)
  size = config.data.image_size
  images = torch.from_numpy(rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8)).to(
    device
  )
  labels = torch.from_numpy(
    rng.integers(0, num_classes, (batch_size, size, size), dtype=np.int64)
  ).to(device)
  autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == 'bfloat16')
  forward = torch.compile(model) if use_compile else model
  return device, model, forward, images, labels, autocast


def _time(step, device, steps: int, warmup: int) -> dict:
  """The first call (compilation with torch.compile) timed alone, then the shared statistics."""

  def synced():
    step()
    _synchronize(device)

  start = time.perf_counter()
  synced()
  first_s = time.perf_counter() - start
  timing = benchmarking.timed_steps(synced, steps, max(warmup - 1, 0))
  return {**timing, 'first_step_s': first_s}


def _result(mode, config, batch_size, dtype, model, timing, device, use_compile) -> dict[str, Any]:
  seconds = timing['median_ms'] / 1e3
  return {
    'mode': mode,
    'batch_size': int(batch_size),
    'dtype': dtype,
    'image_size': int(config.data.image_size),
    'num_params': count_params(model),
    'images_per_s': batch_size / seconds,
    'ms_per_step': timing['median_ms'],
    'torch_compile': bool(use_compile),
    'torch_version': torch.__version__,
    'torch_device': str(device),
    'peak_bytes_in_use': (
      int(torch.cuda.max_memory_allocated(device)) if device.type == 'cuda' else None
    ),
    'timing': timing,
  }


def benchmark_train_step(
  config: ml_collections.ConfigDict,
  batch_size: int,
  dtype: str,
  steps: int,
  warmup: int,
  *,
  use_compile: bool = True,
  device: torch.device | None = None,
) -> dict:
  """Times one Adam step (normalise, forward, cross-entropy, backward, update) like ours."""
  device, model, forward, images, labels, autocast = _setup(
    config, batch_size, dtype, device, use_compile
  )
  model.train()
  # Fused Adam: one kernel for all parameters (CUDA, and CPU since torch 2.4).
  optimizer = torch.optim.Adam(model.parameters(), lr=config.train.learning_rate, fused=True)
  mean, std = tuple(config.data.mean), tuple(config.data.std)
  if device.type == 'cuda':
    torch.cuda.reset_peak_memory_stats(device)

  def step():
    optimizer.zero_grad(set_to_none=True)
    with autocast:
      logits = forward(_normalize(images, mean, std))
    loss = F.cross_entropy(logits.float(), labels)
    loss.backward()
    optimizer.step()

  timing = _time(step, device, steps, warmup)
  return _result('torch_train', config, batch_size, dtype, model, timing, device, use_compile)


def predict_probs(forward, x, tta: bool, autocast, rotations: bool = False) -> torch.Tensor:
  """Softmax (B, C, H, W) of normalised NCHW images; with `tta`, averaged over the four flips
  (identity, left-right, up-down, both), or with `rotations` the four quarter turns each also
  mirrored, as `evaluate.predict_probs`."""
  if not tta:
    views = [(0, ())]
  elif rotations:
    views = [(k, m) for k in range(4) for m in ((), (3,))]
  else:
    views = [(0, ()), (0, (3,)), (0, (2,)), (0, (2, 3))]  # NCHW: W is dim 3, H dim 2

  def probs(k, dims):
    viewed = torch.rot90(x, k, (2, 3))
    viewed = torch.flip(viewed, dims) if dims else viewed
    with autocast:
      p = torch.softmax(forward(viewed).float(), dim=1)
    p = torch.flip(p, dims) if dims else p
    return torch.rot90(p, -k, (2, 3))

  return sum(probs(k, dims) for k, dims in views) / len(views)


def benchmark_inference(
  config: ml_collections.ConfigDict,
  batch_size: int,
  dtype: str,
  steps: int,
  warmup: int,
  *,
  use_compile: bool = True,
  device: torch.device | None = None,
) -> dict:
  """Times prediction (normalise, forward at eval, softmax, argmax) like ours; with
  `config.eval.tta`, softmax averaged over the four flips, as ours."""
  device, model, forward, images, _, autocast = _setup(
    config, batch_size, dtype, device, use_compile
  )
  model.eval()
  mean, std = tuple(config.data.mean), tuple(config.data.std)
  if device.type == 'cuda':
    torch.cuda.reset_peak_memory_stats(device)

  @torch.inference_mode()
  def step():
    x = _normalize(images, mean, std)
    probs = predict_probs(
      forward, x, bool(config.eval.tta), autocast, bool(config.eval.tta_rotations)
    )
    return probs.argmax(dim=1).to(torch.uint8)

  timing = _time(step, device, steps, warmup)
  return _result('torch_infer', config, batch_size, dtype, model, timing, device, use_compile)


def benchmark_conv(
  layer: dict, steps: int, warmup: int, device: torch.device | None = None
) -> dict[str, float]:
  """Median ms of one conv's forward, input-gradient and kernel-gradient passes in float32,
  channels_last, the layer as `benchmarking.conv_layers` describes it; eager, as each pass is
  one library call (oneDNN on CPUs) either way."""
  device = device or default_device()
  batch, height, width, channels = layer['input_shape']
  kernel_size = tuple(layer['kernel_size'])
  padding = layer['padding']
  if padding == 'VALID':
    padding = (0, 0)
  elif padding == 'SAME':  # symmetric for the odd kernels and unit strides of our nets
    if any(k % 2 == 0 for k in kernel_size) or any(s != 1 for s in layer['strides']):
      raise ValueError(f'SAME padding of {layer} has no symmetric PyTorch equivalent')
    padding = tuple(k // 2 for k in kernel_size)
  else:  # ((top, bottom), (left, right))
    padding = tuple(int(p[0]) for p in padding)
  conv = nn.Conv2d(
    channels,
    layer['features'],
    kernel_size,
    stride=tuple(layer['strides']),
    padding=padding,
    bias=False,
  ).to(device, memory_format=torch.channels_last)
  x = torch.randn(batch, channels, height, width, device=device).contiguous(
    memory_format=torch.channels_last
  )
  with torch.no_grad():
    dy = torch.ones_like(conv(x))

  def forward():
    with torch.no_grad():
      conv(x)

  def backward(mask):
    # What autograd calls for a convolution's gradients, one of them at a time.
    return lambda: torch.ops.aten.convolution_backward(
      dy, x, conv.weight, None, conv.stride, conv.padding, conv.dilation, False, [0, 0], 1, mask
    )

  passes = (forward, backward([True, False, False]), backward([False, True, False]))
  return {
    name: _time(fn, device, steps, warmup)['median_ms']
    for name, fn in zip(benchmarking.CONV_PASSES, passes)
  }
