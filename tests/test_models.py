"""Tests of wcsegnet_jax.models: shapes, parameter counts, the residual block, modes and dtypes."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from wcsegnet_jax import models

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
WCSEGNET_PARAMS = PLAIN_UNET_PARAMS + 1_395_776   # 63_878_724


def tiny_config(**overrides):
  config = base.get_config().model
  config.base_width = 4
  config.num_levels = 2
  config.update(overrides)
  return config


def init(model, shape, seed=0):
  return model.init(jax.random.key(seed), jnp.zeros(shape, jnp.float32), train=False)


def random_images(shape, seed=1):
  return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


@pytest.mark.parametrize('height,width,num_levels,pad_mode', [
    (120, 120, 4, 'reflect'),
    (64, 64, 2, 'constant'),
    (100, 72, 3, 'edge'),
    (16, 16, 4, 'reflect'),     # exactly 2**num_levels
])
def test_output_shape(height, width, num_levels, pad_mode):
  model = models.create_model(tiny_config(num_levels=num_levels, pad_mode=pad_mode))
  images = random_images((2, height, width, 3))
  variables = init(model, images.shape)
  logits = model.apply(variables, images, train=False)
  assert logits.shape == (2, height, width, 4)
  assert logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))


@pytest.mark.parametrize('residual,expected', [(True, WCSEGNET_PARAMS), (False, PLAIN_UNET_PARAMS)])
def test_paper_parameter_count(residual, expected):
  config = base.get_config().model
  config.residual = residual
  model = models.create_model(config)
  variables = jax.eval_shape(lambda: init(model, (1, 120, 120, 3)))
  num_params = models.count_params(variables['params'])
  print(f'residual={residual}: {num_params:,} parameters')
  assert num_params == expected
  assert models.count_params(variables['batch_stats']) == 2 * 64   # the head's BatchNorm only


def _conv_same(x, conv_params):
  y = jax.lax.conv_general_dilated(x, conv_params['kernel'], (1, 1), 'SAME',
                                   dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  return y + conv_params['bias']


@pytest.mark.parametrize('in_features', [6, 3])
def test_residual_block_is_input_plus_branch(in_features):
  block = models.ConvBlock(6, activation='leaky_relu', leaky_relu_slope=0.3)
  x = random_images((2, 8, 8, in_features))
  params = block.init(jax.random.key(0), x, train=False)['params']
  act = lambda y: jax.nn.leaky_relu(y, 0.3)
  branch = _conv_same(act(_conv_same(x, params['conv1'])), params['conv2'])
  if in_features == 6:
    assert 'proj' not in params
    shortcut = x
  else:   # widths differ: a 1x1 projection
    proj = params['proj']
    shortcut = jnp.einsum('bhwc,cd->bhwd', x, proj['kernel'][0, 0]) + proj['bias']
  expected = act(shortcut + branch)
  np.testing.assert_allclose(block.apply({'params': params}, x, train=False), expected,
                             rtol=1e-5, atol=1e-5)


def test_plain_block_has_no_add():
  block = models.ConvBlock(6, residual=False, activation='relu')
  x = random_images((2, 8, 8, 3))
  params = block.init(jax.random.key(0), x, train=False)['params']
  assert set(params) == {'conv1', 'conv2'}
  expected = jax.nn.relu(_conv_same(jax.nn.relu(_conv_same(x, params['conv1'])), params['conv2']))
  np.testing.assert_allclose(block.apply({'params': params}, x, train=False), expected,
                             rtol=1e-5, atol=1e-5)


def test_eval_deterministic_and_train_uses_dropout_rng():
  model = models.create_model(tiny_config())
  images = random_images((2, 32, 32, 3))
  variables = init(model, images.shape)
  np.testing.assert_array_equal(model.apply(variables, images, train=False),
                                model.apply(variables, images, train=False))

  def train_logits(seed):
    logits, updates = model.apply(variables, images, train=True, mutable=['batch_stats'],
                                  rngs={'dropout': jax.random.key(seed)})
    assert set(updates) == {'batch_stats'}
    return logits

  np.testing.assert_array_equal(train_logits(1), train_logits(1))
  assert not np.allclose(train_logits(1), train_logits(2))


def test_bfloat16_compute_close_to_float32():
  images = random_images((2, 32, 32, 3))
  model32 = models.create_model(tiny_config())
  model16 = models.create_model(tiny_config(dtype='bfloat16'))
  variables = init(model32, images.shape)
  # Same parameter tree, kept in float32, whatever the compute dtype.
  variables16 = init(model16, images.shape)
  assert jax.tree_util.tree_structure(variables16) == jax.tree_util.tree_structure(variables)
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(variables16))
  logits32 = model32.apply(variables, images, train=False)
  logits16 = model16.apply(variables, images, train=False)
  assert logits16.dtype == jnp.float32
  assert np.all(np.isfinite(logits16))
  scale = float(jnp.max(jnp.abs(logits32)))
  assert float(jnp.max(jnp.abs(logits16 - logits32))) < 0.05 * scale


@pytest.mark.parametrize('overrides', [
    dict(upsample='nearest'),
    dict(activation='relu'),
    dict(block_norm='batch'),
    dict(residual=False, num_levels=3, blocks_per_stage=1),
])
def test_variants_build_and_run(overrides):
  model = models.create_model(tiny_config(**overrides))
  images = random_images((2, 40, 24, 3))
  variables = init(model, images.shape)
  logits, _ = model.apply(variables, images, train=True, mutable=['batch_stats'],
                          rngs={'dropout': jax.random.key(0)})
  assert logits.shape == (2, 40, 24, 4)
  assert np.all(np.isfinite(logits))
  if overrides.get('upsample') == 'nearest':
    assert not any('up' in stage for stage in variables['params'].values())


@pytest.mark.parametrize('shape', [(1, 8, 8, 3), (1, 32, 8, 3)])
def test_image_smaller_than_downsampling_raises(shape):
  model = models.create_model(tiny_config(num_levels=4))
  with pytest.raises(ValueError, match='smaller than 2\\*\\*model.num_levels'):
    init(model, shape)


def test_flops_scale_with_pixels():
  model = models.create_model(tiny_config())
  flops64 = models.model_flops_per_image(model, 64, 64)
  flops128 = models.model_flops_per_image(model, 128, 128)
  assert flops64 > 0
  assert 3.5 < flops128 / flops64 < 4.5
