"""WCSegNet (Nasser et al. 2025): a U-Net of residual Conv-Blocks for white-blood-cell nuclei.

Written with Flax Linen rather than NNX: Linen modules compile to pure `init`/`apply` functions
over explicit variable collections, which is what the training code wants (a `batch_stats`
collection threaded through a `jax.jit`-ed step with donated state).

The network, in the paper's words and ours:
  ConvBlock     conv3x3 -> act -> conv3x3 -> + input (1x1 projection if widths differ) -> act
  EncoderStage  `blocks_per_stage` ConvBlocks at base_width * 2**level, then a 2x2 max-pool
  Bottleneck    ConvBlocks at base_width * 2**num_levels (1024 for the paper)
  DecoderStage  2x2 upsample, concat the skip, ConvBlocks at the level's width
  Head          conv3x3 + BatchNorm + act + dropout, then a 1x1 conv to the class logits
"""

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from wcsegnet_jax.core import classes
from wcsegnet_jax.model import batch_norm


def activation_fn(name: str, leaky_relu_slope: float) -> Callable[[jax.Array], jax.Array]:
  if name == 'relu':
    return nn.relu
  if name == 'leaky_relu':
    return functools.partial(nn.leaky_relu, negative_slope=leaky_relu_slope)
  raise ValueError(f"model.activation must be 'relu' or 'leaky_relu', got {name!r}")


class ConvBlock(nn.Module):
  """The paper's residual Conv-Block; with `residual=False`, the plain U-Net double conv."""

  features: int
  residual: bool = True
  block_norm: str = 'none'  # 'batch' puts a BatchNorm after each conv (the paper has none)
  bn_momentum: float = 0.99
  activation: str = 'leaky_relu'
  leaky_relu_slope: float = 0.3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    act = activation_fn(self.activation, self.leaky_relu_slope)
    normalised = self.block_norm == 'batch'

    def conv_norm(y, i):
      # A bias right before a BatchNorm is cancelled by its mean subtraction: drop it.
      y = nn.Conv(
        self.features,
        (3, 3),
        padding='SAME',
        use_bias=not normalised,
        dtype=self.dtype,
        name=f'conv{i}',
      )(y)
      if normalised:
        y = batch_norm.BatchNorm(
          use_running_average=not train, momentum=self.bn_momentum, name=f'norm{i}'
        )(y)
      return y

    branch = act(conv_norm(x, 1))
    branch = conv_norm(branch, 2)
    if not self.residual:
      return act(branch)
    shortcut = x
    if x.shape[-1] != self.features:
      # Widths differ (first block of a stage): a 1x1 conv projects the input for the add.
      shortcut = nn.Conv(self.features, (1, 1), dtype=self.dtype, name='proj')(x)
    return act(shortcut + branch)


class EncoderStage(nn.Module):
  """ConvBlocks at one level's width; returns the (optionally dropped) features = the skip."""

  features: int
  block: Callable[..., nn.Module]
  num_blocks: int
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    for i in range(self.num_blocks):
      x = self.block(self.features, name=f'block{i}')(x, train=train)
    return nn.Dropout(self.dropout, deterministic=not train)(x)


class TransposedConv2x2(nn.Module):
  """nn.ConvTranspose((2, 2), strides=(2, 2), padding='VALID'), the same parameters and output,
  computed as one matrix product laid out as pixels.

  With stride = kernel the 2x2 windows do not overlap, so each input position writes its own
  2x2 output patch. XLA:CPU runs the gradient of the general transposed convolution ~10x
  slower than this product's (docs/benchmarks.md); the result is the same to float rounding.
  """

  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param(
      'kernel', nn.initializers.lecun_normal(), (2, 2, x.shape[-1], self.features), jnp.float32
    )
    bias = self.param('bias', nn.initializers.zeros_init(), (self.features,), jnp.float32)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    # lax.conv_transpose (flax's, transpose_kernel=False) applies the kernel flipped in space.
    y = jnp.einsum('bhwc,ijco->bhiwjo', x, kernel[::-1, ::-1])
    b, h, _, w, _, c = y.shape
    return y.reshape(b, 2 * h, 2 * w, c) + bias


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """nn.max_pool(x, (2, 2), strides=(2, 2)) on even sizes, as a reshape and a max: its
  gradient is elementwise, where XLA:CPU's select-and-scatter is ~3x slower."""
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class DecoderStage(nn.Module):
  """2x2 upsample, concat the skip, ConvBlocks at the level's width, optional dropout."""

  features: int
  block: Callable[..., nn.Module]
  num_blocks: int
  upsample: str = 'transpose'
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, skip: jax.Array, *, train: bool) -> jax.Array:
    if self.upsample == 'transpose':
      # Learned 2x2, stride 2 (no activation, as Keras' Conv2DTranspose default).
      x = TransposedConv2x2(self.features, dtype=self.dtype, name='up')(x)
    elif self.upsample == 'nearest':
      b, h, w, c = x.shape
      x = jax.image.resize(x, (b, 2 * h, 2 * w, c), method='nearest')
    else:
      raise ValueError(f"model.upsample must be 'transpose' or 'nearest', got {self.upsample!r}")
    x = jnp.concatenate([skip, x.astype(skip.dtype)], axis=-1)  # skip first, as Keras' U-Net
    for i in range(self.num_blocks):
      x = self.block(self.features, name=f'block{i}')(x, train=train)
    return nn.Dropout(self.dropout, deterministic=not train)(x)


class Head(nn.Module):
  """conv3x3 + BatchNorm + act + dropout, then a 1x1 conv to float32 logits."""

  features: int
  num_classes: int
  act: Callable[[jax.Array], jax.Array]
  dropout: float = 0.0
  bn_momentum: float = 0.99
  dtype: Any = jnp.float32
  logits_per_class: int = 1  # p*p sub-pixel logits per class with model.patch_size p

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = nn.Conv(
      self.features, (3, 3), padding='SAME', use_bias=False, dtype=self.dtype, name='conv'
    )(x)
    # Computes in float32. Its running statistics are what evaluation uses: if the activations
    # it sees keep growing (no normalisation in the paper's blocks), statistics averaged with a
    # long memory lag behind and the eval-mode net can predict all background (docs/results.md).
    x = batch_norm.BatchNorm(use_running_average=not train, momentum=self.bn_momentum, name='norm')(
      x
    )
    x = self.act(x)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    # The logits conv runs in float32 whatever the compute dtype: it is tiny (width -> classes)
    # and the softmax / cross-entropy that follow want full-precision logits.
    return nn.Conv(
      self.num_classes * self.logits_per_class, (1, 1), dtype=jnp.float32, name='logits'
    )(x)


class Refinement(nn.Module):
  """Full-resolution residual refinement of the logits: two 3x3 convs over [image, logits]
  and a 1x1 conv to a correction, zero at initialisation, so training starts from the plain
  net's output. Not in the paper: with 2x2 patches (patch_size 2) the U-Net decides each 2x2
  block's four pixels from 1/2-resolution features; this sees every pixel next to its
  neighbours."""

  features: int
  act: Callable[[jax.Array], jax.Array]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, image: jax.Array, logits: jax.Array) -> jax.Array:
    x = jnp.concatenate([image, logits.astype(self.dtype)], axis=-1)
    for i in range(2):
      x = self.act(
        nn.Conv(self.features, (3, 3), padding='SAME', dtype=self.dtype, name=f'conv{i}')(x)
      )
    return logits + nn.Conv(
      logits.shape[-1],
      (1, 1),
      dtype=jnp.float32,
      kernel_init=nn.initializers.zeros,
      name='correction',
    )(x)


def space_to_depth(x: jax.Array, p: int) -> jax.Array:
  """(B, H, W, C) -> (B, H/p, W/p, p*p*C): each p x p patch becomes one position."""
  if p == 1:
    return x
  b, h, w, c = x.shape
  x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h // p, w // p, p * p * c)


def depth_to_space(x: jax.Array, p: int) -> jax.Array:
  """(B, H, W, p*p*C) -> (B, H*p, W*p, C); the inverse of `space_to_depth`."""
  if p == 1:
    return x
  b, h, w, pc = x.shape
  c = pc // (p * p)
  x = x.reshape(b, h, w, p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h * p, w * p, c)


def _pad_amounts(size: int, multiple: int) -> tuple[int, int]:
  """Split the padding up to the next multiple as evenly as possible (120 -> 128: 4 and 4)."""
  total = -size % multiple
  return total // 2, total - total // 2


class WCSegNet(nn.Module):
  """WCSegNet; the fields mirror `config.model` (see configs/base.py for their meaning), and
  `num_classes` the data's (wcsegnet_jax/core/classes.py)."""

  num_classes: int = 4
  base_width: int = 64
  num_levels: int = 4
  blocks_per_stage: int = 2
  residual: bool = True
  activation: str = 'leaky_relu'
  leaky_relu_slope: float = 0.3
  block_norm: str = 'none'
  bn_momentum: float = 0.99
  encoder_dropout: float = 0.5
  decoder_dropout: float = 0.5
  decoder_dropout_stages: tuple[int, ...] = (0, 1)
  head_dropout: float = 0.1
  upsample: str = 'transpose'
  pad_mode: str = 'reflect'
  patch_size: int = 1
  refine_width: int = 0
  dtype: str = 'float32'

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    """(B, H, W, 3) normalised images -> (B, H, W, num_classes) float32 logits."""
    _, height, width, _ = images.shape
    p = self.patch_size
    multiple = 2**self.num_levels * p
    if height < multiple or width < multiple:
      raise ValueError(
        f'images of {height}x{width} are smaller than 2**model.num_levels (x patch_size '
        f'{p}) = {multiple}, the downsampling of the {self.num_levels} 2x2 poolings (and the '
        f'patches); use larger images or a smaller model.num_levels.'
      )
    dtype = jnp.dtype(self.dtype)
    block = functools.partial(
      ConvBlock,
      residual=self.residual,
      block_norm=self.block_norm,
      bn_momentum=self.bn_momentum,
      activation=self.activation,
      leaky_relu_slope=self.leaky_relu_slope,
      dtype=dtype,
    )
    width_at = lambda level: self.base_width * 2**level

    # Every pooling must halve an even size and every upsample must land back on its skip's
    # size, so the input is padded up to a multiple of 2**num_levels (120 -> 128, 4 pixels each
    # side) and the logits are cropped back. 'reflect' padding continues the image instead of
    # drawing a zero frame the net would learn to special-case.
    pad_h, pad_w = _pad_amounts(height, multiple), _pad_amounts(width, multiple)
    x = padded = jnp.pad(images, ((0, 0), pad_h, pad_w, (0, 0)), mode=self.pad_mode).astype(dtype)
    # patch_size p > 1 (not in the paper; the CPU recipe): each p x p patch of pixels becomes
    # one position with 3*p*p channels, the U-Net runs at 1/p of the resolution, and the head
    # predicts p*p logits per class that are laid back out as pixels (a learned "pixel shuffle").
    # The same work buys p*p times the width, which a CPU runs faster than thin full-size maps.
    x = space_to_depth(x, p)

    skips = []
    for level in range(self.num_levels):
      # The paper puts a dropout "after the second 512 block", i.e. after the deepest encoder
      # stage. As in the Keras U-Net it follows (drop4 feeds both pool4 and the merge), the
      # dropped features are both pooled and used as the skip.
      deepest = level == self.num_levels - 1
      x = EncoderStage(
        width_at(level),
        block,
        self.blocks_per_stage,
        dropout=self.encoder_dropout if deepest else 0.0,
        name=f'encoder{level}',
      )(x, train=train)
      skips.append(x)
      x = max_pool_2x2(x)  # sizes are even: padded to a multiple of 2**num_levels

    x = EncoderStage(width_at(self.num_levels), block, self.blocks_per_stage, name='bottleneck')(
      x, train=train
    )

    # Decoder stage 0 is the deepest; the paper's "two dropouts mid-path" follow stages (0, 1).
    for stage, level in enumerate(reversed(range(self.num_levels))):
      x = DecoderStage(
        width_at(level),
        block,
        self.blocks_per_stage,
        upsample=self.upsample,
        dropout=self.decoder_dropout if stage in self.decoder_dropout_stages else 0.0,
        dtype=dtype,
        name=f'decoder{stage}',
      )(x, skips[level], train=train)

    logits = Head(
      self.base_width,
      self.num_classes,
      activation_fn(self.activation, self.leaky_relu_slope),
      dropout=self.head_dropout,
      bn_momentum=self.bn_momentum,
      dtype=dtype,
      name='head',
      logits_per_class=p * p,
    )(x, train=train)
    logits = depth_to_space(logits, p)
    if self.refine_width:
      logits = Refinement(
        self.refine_width,
        activation_fn(self.activation, self.leaky_relu_slope),
        dtype=dtype,
        name='refine',
      )(padded, logits)
    return logits[:, pad_h[0] : pad_h[0] + height, pad_w[0] : pad_w[0] + width].astype(jnp.float32)


def create_model(model_config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
  """WCSegNet from `config.model` with `num_classes` outputs (the data's classes:
  `classes.table_of(config.data).num_classes`); every key is a field, so an unknown key is a
  TypeError."""
  kwargs = model_config.to_dict()
  kwargs['decoder_dropout_stages'] = tuple(kwargs['decoder_dropout_stages'])
  return WCSegNet(num_classes=int(num_classes), **kwargs)


def model_for(config: ml_collections.ConfigDict) -> nn.Module:
  """The model of a whole config: `config.model`, with the classes of `config.data`."""
  return create_model(config.model, classes.table_of(config.data).num_classes)


def abstract_variables(config: ml_collections.ConfigDict) -> dict:
  """The shapes (nothing allocated) of `model_for(config)`'s {'params', 'batch_stats'}."""
  size = config.data.image_size
  variables = jax.eval_shape(
    lambda: model_for(config).init(
      jax.random.key(0), jnp.zeros((1, size, size, 3), jnp.float32), train=False
    )
  )
  return {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}


def count_params(params: Any) -> int:
  """Number of scalars in a pytree of arrays (or of `jax.ShapeDtypeStruct`s from eval_shape)."""
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(params))
