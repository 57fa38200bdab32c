"""Tests of wcsegnet_jax.models: shapes, parameter counts, the residual block, modes and dtypes."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.linen as nn  # pylint: disable=g-import-not-at-top
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from wcsegnet_jax.core import classes
from wcsegnet_jax.model import models

# Plain (residual=False) paper model, by hand: conv(k, cin, cout) = k*k*cin*cout + cout, each
# stage = 2 blocks = 4 convs (the first from the stage's input width), each decoder stage adds
# its 2x2 transposed conv, whose input is the deeper width.
#   encoder0   3->64     conv(3,3,64)    + 3*conv(3,64,64)                        =    112_576
#   encoder1   64->128   conv(3,64,128)  + 3*conv(3,128,128)                      =    516_608
#   encoder2   128->256  conv(3,128,256) + 3*conv(3,256,256)                      =  2_065_408
#   encoder3   256->512  conv(3,256,512) + 3*conv(3,512,512)                      =  8_259_584
#   bottleneck 512->1024 conv(3,512,1024)+ 3*conv(3,1024,1024)                    = 33_034_240
#   decoder0   conv(2,1024,512) + conv(3,1024,512) + 3*conv(3,512,512)            = 13_896_192
#   decoder1   conv(2,512,256)  + conv(3,512,256)  + 3*conv(3,256,256)            =  3_474_688
#   decoder2   conv(2,256,128)  + conv(3,256,128)  + 3*conv(3,128,128)            =    868_992
#   decoder3   conv(2,128,64)   + conv(3,128,64)   + 3*conv(3,64,64)              =    217_408
#   head       3*3*64*64 (no bias, BatchNorm follows) + 2*64 (BN) + conv(1,64,4)  =     37_252
#                                                                           total = 62_482_948
PLAIN_UNET_PARAMS = 62_482_948
# WCSegNet adds one 1x1 projection per stage, where the first block changes the width:
# conv(1,3,64) + conv(1,64,128) + conv(1,128,256) + conv(1,256,512) + conv(1,512,1024)
# + conv(1,1024,512) + conv(1,512,256) + conv(1,256,128) + conv(1,128,64)
# = 256 + 8_320 + 33_024 + 131_584 + 525_312 + 524_800 + 131_328 + 32_896 + 8_256 = 1_395_776.
WCSEGNET_PARAMS = PLAIN_UNET_PARAMS + 1_395_776  # 63_878_724


IMAGES_SHAPE = (2, 32, 32, 3)  # shared by most tests: op-by-op compiles are cached by shape


def tiny_config(**overrides):
  config = base.get_config().model
  config.base_width = 4
  config.num_levels = 2
  config.update(overrides)
  return config


def abstract_variables(model, shape):
  """The variables' shapes and dtypes, traced without computing anything."""
  return jax.eval_shape(
    lambda: model.init(jax.random.key(0), jnp.zeros(shape, jnp.float32), train=False)
  )


def random_variables(model, shape, seed=0):
  """He-scaled random variables of the right shapes, without `model.init`.

  On CPU, `init` compiles a threefry kernel per parameter shape, about a second each: tens of
  seconds for a whole U-Net. Filling the shapes from numpy keeps this file fast (and for the
  same reason, images come from numpy too).
  """
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name == 'kernel':
      values = rng.normal(size=leaf.shape) * np.sqrt(2 / np.prod(leaf.shape[:-1]))
    elif name == 'bias':
      values = 0.1 * rng.normal(size=leaf.shape)
    elif name in ('scale', 'var'):
      values = np.ones(leaf.shape)
    else:  # BatchNorm running 'mean'
      values = np.zeros(leaf.shape)
    return jnp.asarray(values, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, abstract_variables(model, shape))


def random_images(shape, seed=1):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def forward(model, variables, images, *, train, dropout_seed=0):
  """The logits; train mode also updates (and here drops) the batch_stats.

  Op by op, not jitted: the compiled ops are cached across tests, which share shapes, where a
  jit would compile each model afresh (seconds each on CPU).
  """
  if not train:
    return model.apply(variables, images, train=False)
  logits, updates = model.apply(
    variables,
    images,
    train=True,
    mutable=['batch_stats'],
    rngs={'dropout': jax.random.key(dropout_seed)},
  )
  assert set(updates) == {'batch_stats'}
  return logits


@pytest.mark.parametrize(
  'height,width,num_levels,pad_mode',
  [
    (120, 120, 4, 'reflect'),
    (64, 64, 2, 'constant'),
    (100, 72, 3, 'edge'),
    (4, 22, 2, 'reflect'),  # height exactly 2**num_levels, width padded 1 + 1
  ],
)
def test_output_shape(height, width, num_levels, pad_mode):
  model = models.create_model(tiny_config(num_levels=num_levels, pad_mode=pad_mode), 4)
  images = random_images((2, height, width, 3))
  variables = random_variables(model, images.shape)
  logits = forward(model, variables, images, train=False)
  assert logits.shape == (2, height, width, 4)
  assert logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))


@pytest.mark.parametrize('residual,expected', [(True, WCSEGNET_PARAMS), (False, PLAIN_UNET_PARAMS)])
def test_paper_parameter_count(residual, expected):
  config = base.get_config().model
  config.residual = residual
  model = models.create_model(config, classes.PAPER_TABLE.num_classes)
  variables = abstract_variables(model, (1, 120, 120, 3))
  num_params = models.count_params(variables['params'])
  print(f'residual={residual}: {num_params:,} parameters')
  assert num_params == expected
  assert models.count_params(variables['batch_stats']) == 2 * 64  # the head's BatchNorm only


def _conv_same(x, conv_params):
  y = jax.lax.conv_general_dilated(
    x, conv_params['kernel'], (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')
  )
  return y + conv_params['bias']


@pytest.mark.parametrize('in_features', [6, 3])
def test_residual_block_is_input_plus_branch(in_features):
  block = models.ConvBlock(6, activation='leaky_relu', leaky_relu_slope=0.3)
  x = random_images((2, 8, 8, in_features))
  params = random_variables(block, x.shape)['params']
  act = lambda y: jax.nn.leaky_relu(y, 0.3)
  branch = _conv_same(act(_conv_same(x, params['conv1'])), params['conv2'])
  if in_features == 6:
    assert 'proj' not in params
    shortcut = x
  else:  # widths differ: a 1x1 projection
    proj = params['proj']
    shortcut = jnp.einsum('bhwc,cd->bhwd', x, proj['kernel'][0, 0]) + proj['bias']
  expected = act(shortcut + branch)
  np.testing.assert_allclose(
    block.apply({'params': params}, x, train=False), expected, rtol=1e-5, atol=1e-5
  )


def test_plain_block_has_no_add():
  block = models.ConvBlock(6, residual=False, activation='relu')
  x = random_images((2, 8, 8, 3))
  params = random_variables(block, x.shape)['params']
  assert set(params) == {'conv1', 'conv2'}
  expected = jax.nn.relu(_conv_same(jax.nn.relu(_conv_same(x, params['conv1'])), params['conv2']))
  np.testing.assert_allclose(
    block.apply({'params': params}, x, train=False), expected, rtol=1e-5, atol=1e-5
  )


def test_eval_deterministic_and_train_uses_dropout_rng():
  model = models.create_model(tiny_config(), 4)
  images = random_images(IMAGES_SHAPE)
  variables = random_variables(model, images.shape)
  np.testing.assert_array_equal(
    forward(model, variables, images, train=False), forward(model, variables, images, train=False)
  )
  train_logits = lambda seed: forward(model, variables, images, train=True, dropout_seed=seed)
  np.testing.assert_array_equal(train_logits(1), train_logits(1))
  assert not np.allclose(train_logits(1), train_logits(2))


def test_bfloat16_compute_close_to_float32():
  images = random_images(IMAGES_SHAPE)
  model32 = models.create_model(tiny_config(), 4)
  model16 = models.create_model(tiny_config(dtype='bfloat16'), 4)
  variables = random_variables(model32, images.shape)
  # Same parameter tree, kept in float32, whatever the compute dtype.
  variables16 = abstract_variables(model16, images.shape)
  assert jax.tree_util.tree_structure(variables16) == jax.tree_util.tree_structure(variables)
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(variables16))
  logits32 = forward(model32, variables, images, train=False)
  logits16 = forward(model16, variables, images, train=False)
  assert logits16.dtype == jnp.float32
  assert np.all(np.isfinite(logits16))
  scale = float(jnp.max(jnp.abs(logits32)))
  assert float(jnp.max(jnp.abs(logits16 - logits32))) < 0.05 * scale


@pytest.mark.parametrize(
  'overrides',
  [
    dict(upsample='nearest'),
    dict(activation='relu'),
    dict(block_norm='batch'),
    dict(residual=False, blocks_per_stage=1),
  ],
)
def test_variants_build_and_run(overrides):
  model = models.create_model(tiny_config(**overrides), 4)
  images = random_images(IMAGES_SHAPE)
  variables = random_variables(model, images.shape)
  logits = forward(model, variables, images, train=True)
  assert logits.shape == IMAGES_SHAPE[:3] + (4,)
  assert np.all(np.isfinite(logits))
  if overrides.get('upsample') == 'nearest':
    assert not any('up' in stage for stage in variables['params'].values())


@pytest.mark.parametrize('shape', [(1, 8, 8, 3), (1, 32, 8, 3)])
def test_image_smaller_than_downsampling_raises(shape):
  model = models.create_model(tiny_config(num_levels=4), 4)
  with pytest.raises(ValueError, match='smaller than 2\\*\\*model.num_levels'):
    abstract_variables(model, shape)


def test_space_to_depth_round_trip_and_layout():
  x = jnp.arange(2 * 4 * 6 * 3, dtype=jnp.float32).reshape(2, 4, 6, 3)
  folded = models.space_to_depth(x, 2)
  assert folded.shape == (2, 2, 3, 12)
  # Position (0, 1) holds the 2x2 patch of rows 0-1, columns 2-3, pixel by pixel.
  np.testing.assert_array_equal(folded[0, 0, 1].reshape(2, 2, 3), x[0, 0:2, 2:4])
  np.testing.assert_array_equal(models.depth_to_space(folded, 2), x)


@pytest.mark.parametrize('size', [120, 100])
def test_patch_size_keeps_full_resolution_logits(size):
  model = models.create_model(tiny_config(patch_size=2, num_levels=2), 4)
  images = jnp.zeros((1, size, size, 3))
  variables = model.init(jax.random.key(0), images, train=False)
  assert model.apply(variables, images, train=False).shape == (1, size, size, 4)
  kernel = variables['params']['encoder0']['block0']['conv1']['kernel']
  assert kernel.shape[2] == 12  # 3 channels x 2 x 2 pixels per position
  assert variables['params']['head']['logits']['kernel'].shape[-1] == 4 * 4


def test_refinement_starts_as_the_plain_net_and_adds_its_convs(width=8):
  plain = models.create_model(tiny_config(patch_size=2, num_levels=2), 4)
  refined = models.create_model(tiny_config(patch_size=2, num_levels=2, refine_width=width), 4)
  images = random_images(IMAGES_SHAPE)
  variables = dict(random_variables(refined, IMAGES_SHAPE))
  refine = variables['params']['refine']
  # [image, logits] -> width -> width -> a 1x1 correction of the 4 logits, biases included.
  assert models.count_params(refine) == (9 * 7 * width + width) + (9 * width * width + width) + (
    width * 4 + 4
  )
  # The correction's kernel starts at zero (as `init` makes it); with zero bias too, the logits
  # are the plain net's.
  zero = {
    'kernel': jnp.zeros_like(refine['correction']['kernel']),
    'bias': jnp.zeros_like(refine['correction']['bias']),
  }
  params = {**variables['params'], 'refine': {**refine, 'correction': zero}}
  without = {**variables, 'params': {k: v for k, v in params.items() if k != 'refine'}}
  np.testing.assert_allclose(
    forward(refined, {**variables, 'params': params}, images, train=False),
    forward(plain, without, images, train=False),
    atol=1e-5,
  )
  init = refined.init(jax.random.key(0), images, train=False)
  assert not np.any(init['params']['refine']['correction']['kernel'])
  # Trained (non-zero) corrections change the logits pixel by pixel.
  assert not np.allclose(
    forward(refined, variables, images, train=False), forward(plain, without, images, train=False)
  )


def test_cpu_recipe_parameter_count():
  """configs/cpu.py's net: base width 16, BatchNorm blocks, 2x2 patches (shipped pretrained)."""
  from configs import cpu  # pylint: disable=g-import-not-at-top

  config = cpu.get_config()
  model = models.create_model(config.model, classes.table_of(config.data).num_classes)
  shapes = abstract_variables(model, (1, 120, 120, 3))
  assert models.count_params(shapes['params']) == 4_000_384


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_transposed_conv_2x2_is_flax_conv_transpose(dtype):
  """Same parameter tree, same initial values, same output as nn.ConvTranspose 2x2 stride 2."""
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 7, 6))
  ours = models.TransposedConv2x2(4, dtype=dtype)
  flax_conv = nn.ConvTranspose(4, (2, 2), strides=(2, 2), padding='VALID', dtype=dtype)
  variables = ours.init(jax.random.PRNGKey(1), x)
  assert jax.tree.map(jnp.shape, variables) == jax.tree.map(
    jnp.shape, flax_conv.init(jax.random.PRNGKey(1), x)
  )
  variables = jax.tree.map(
    lambda v: jax.random.normal(jax.random.PRNGKey(2), v.shape), variables
  )  # a non-zero bias too
  got, want = ours.apply(variables, x), flax_conv.apply(variables, x)
  assert got.shape == (2, 10, 14, 4) and got.dtype == want.dtype
  tol = 1e-5 if dtype == jnp.float32 else 5e-2
  np.testing.assert_allclose(np.float32(got), np.float32(want), rtol=tol, atol=tol)


def test_max_pool_2x2_is_flax_max_pool():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 6, 3))
  np.testing.assert_array_equal(models.max_pool_2x2(x), nn.max_pool(x, (2, 2), strides=(2, 2)))
