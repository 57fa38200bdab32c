"""Config validation: every problem listed at once; the shipped configs are valid."""

import importlib
import json

from absl import flags
import ml_collections
from ml_collections import config_flags as ml_config_flags
import pytest

from configs import base
from wcsegnet_jax.core import config_checks
from wcsegnet_jax.core import config_flags
from wcsegnet_jax.core import config_keys
from wcsegnet_jax.core import config_lib


SHIPPED_CONFIGS = sorted(
  p.stem for p in config_lib.BASE_CONFIG.parent.glob('*.py') if p.stem != '__init__'
)


@pytest.mark.parametrize(
  'key,value,message',
  [
    ('data.color', 'macenko', "data.color='macenko'"),
    ('data.color_reference', (70.0, 10.0, 5.0, 20.0, 0.0, 10.0), 'data.color_reference'),
    ('data.color_anchors', (20.0, 0.0, 0.0, 90.0, 5.0, 15.0), 'data.color_anchors'),
    ('data.color_anchors', (90.0, 5.0, 15.0), 'data.color_anchors'),
    ('augment.blur_sigma', -1.0, 'blur_sigma'),
    ('augment.jpeg_quality', 99, 'jpeg_quality'),
    ('augment.optics_prob', 1.5, 'optics_prob'),
  ],
)
def test_colour_and_optics_knobs_are_checked(key, value, message):
  config = importlib.import_module('configs.cross_lab').get_config()
  section, name = key.split('.')
  config[section][name] = value
  assert any(message in line for line in config_checks.problems(config))


def test_every_config_file_is_checked():
  assert {'base', 'wcseg', 'cpu', 'pretrained', 'differential'} <= set(SHIPPED_CONFIGS)


@pytest.mark.parametrize('name', SHIPPED_CONFIGS)
def test_shipped_configs_are_valid(name):
  config = importlib.import_module(f'configs.{name}').get_config()
  assert config_checks.problems(config) == []


def test_differential_has_five_types_and_cytoplasm_and_paper_configs_keep_the_paper_map():
  from wcsegnet_jax.core import classes

  table = classes.table_of(importlib.import_module('configs.differential').get_config().data)
  assert table.names == (
    'background',
    'neutrophil',
    'lymphocyte',
    'monocyte',
    'eosinophil',
    'basophil',
    'cytoplasm',
  )
  for name in ('wcseg', 'unet_relu', 'unet_leakyrelu', 'cpu'):
    paper = classes.table_of(importlib.import_module(f'configs.{name}').get_config().data)
    assert paper.names == ('background', 'neutrophil', 'basophil', 'lymphocyte')


@pytest.mark.parametrize('network', ['wcseg', 'unet_relu', 'unet_leakyrelu'])
def test_cpu_small_keeps_the_ablation_it_is_given(network):
  small = importlib.import_module('configs.cpu_small').get_config(network)
  full = importlib.import_module(f'configs.{network}').get_config()
  assert (small.model.residual, small.model.activation) == (
    full.model.residual,
    full.model.activation,
  )


def test_ablations_differ_from_wcseg_only_in_the_block():
  wcseg = importlib.import_module('configs.wcseg').get_config()
  relu = importlib.import_module('configs.unet_relu').get_config()
  leaky = importlib.import_module('configs.unet_leakyrelu').get_config()
  assert (wcseg.model.residual, wcseg.model.activation) == (True, 'leaky_relu')
  assert (relu.model.residual, relu.model.activation) == (False, 'relu')
  assert (leaky.model.residual, leaky.model.activation) == (False, 'leaky_relu')
  for other in (relu, leaky):
    assert other.train == wcseg.train and other.data == wcseg.data


def test_unknown_key_is_named_with_the_closest_real_one():
  c = base.get_config()
  c.train.bach_size = 16
  with pytest.raises(
    config_lib.ConfigError,
    match=r'unknown config key train.bach_size \(did '
    r'you mean train.batch_size\?\)',
  ):
    config_checks.validate(c)


def test_unknown_command_line_overrides_are_one_line_each():
  argv = [
    'main.py',
    '--config=configs/base.py',
    '--config.train.batch_sizee=8',
    '--config.train.batch_size=8',
    '--noconfig.train.progress_barr',
    '--config.data.mean[0]=1',
    '--config.trainn.batch_size',
    '4',
    '--config.zzzz=1',
    '--workdir=/tmp/x',
  ]
  assert config_flags.unknown_overrides(argv, base.get_config()) == [
    'unknown config key train.batch_sizee (did you mean train.batch_size?)',
    'unknown config key train.progress_barr (did you mean train.progress_bar?)',
    'unknown config key trainn.batch_size (did you mean train.batch_size?)',
    'unknown config key zzzz',
  ]
  assert config_flags.overridden_keys(argv) == [
    'train.batch_sizee',
    'train.batch_size',
    'train.progress_barr',
    'data.mean',
    'trainn.batch_size',
    'zzzz',
  ]


def test_a_tool_takes_only_the_keys_given_from_its_flag_config(tmp_path):
  """fit_cell_typer starts from a model folder's config: the flag config's other typer values
  (another model's) must not replace the folder's, and keys given in a --flagfile count."""
  flagfile = tmp_path / 'typer.flags'
  flagfile.write_text('--config.typer.views=2\n')
  argv = [
    'tool.py',
    f'--flagfile={flagfile}',
    '--config.train.batch_size=4',
    '--config.augment.zoom_range=(0.8,1.2)',
    '--model=x',
  ]
  flag_values = flags.FlagValues()
  flags.DEFINE_string('model', '', '', flag_values=flag_values)
  ml_config_flags.DEFINE_config_file(
    'config', str(config_lib.BASE_CONFIG), flag_values=flag_values, sys_argv=argv
  )
  flag_values(argv)
  keys = config_flags.given_keys(flag_values['config'])
  assert sorted(keys) == ['augment.zoom_range', 'train.batch_size', 'typer.views']
  own = base.get_config()
  own.typer.encoder_stages, own.typer.views = 0, 6
  config_flags.apply_given(own, flag_values.config, keys, sections=('typer', 'augment'))
  assert (own.typer.views, own.typer.encoder_stages) == (2, 0)
  assert tuple(own.augment.zoom_range) == (0.8, 1.2)
  assert own.train.batch_size == base.get_config().train.batch_size  # not a section given


def test_a_misspelled_key_in_a_flagfile_is_one_line(tmp_path, capsys):
  flagfile = tmp_path / 'run.flags'
  flagfile.write_text('--config.typer.viewz=2\n')
  argv = ['tool.py', f'--config={config_lib.BASE_CONFIG}', f'--flagfile={flagfile}']
  with pytest.raises(SystemExit) as e:
    config_flags._exit_if_unknown_overrides(argv, 'config', str(config_lib.BASE_CONFIG))
  assert e.value.code == 2
  assert capsys.readouterr().err == (
    'error: unknown config key typer.viewz (did you mean typer.views?)\n'
  )


def test_config_file_argument_is_passed_to_get_config():
  config = config_lib.load_config_file(f'{config_lib.BASE_CONFIG.parent}/cpu_small.py:unet_relu')
  assert (config.model.residual, config.model.activation) == (False, 'relu')


def test_every_problem_is_listed_at_once():
  c = base.get_config()
  c.train.learning_rate = -1.0
  c.train.batch_size = 10
  c.data.image_size = 8
  c.model.activation = 'gelu'
  c.data.cell_types = ('neutrophil', 'myelocyte')
  found = config_checks.problems(c, device_count=4)
  text = '\n'.join(found)
  assert 'train.learning_rate=-1.0 must be > 0' in text
  assert 'train.batch_size=10 must be a positive multiple of the device count (4)' in text
  assert 'data.image_size=8 is too small for model.num_levels=4' in text
  assert "model.activation='gelu'" in text
  assert "['myelocyte'] not a cell type" in text
  assert len(found) == 5


@pytest.mark.parametrize('zoom_range', [(1.2, 0.8), (0.0, 1.2), (0.9,), (0.8, 1.0, 1.2)])
def test_bad_zoom_range_is_named(zoom_range):
  c = base.get_config()
  c.augment.zoom_range = zoom_range
  assert [p for p in config_checks.problems(c, device_count=1) if 'zoom_range' in p] == [
    f'augment.zoom_range={zoom_range}: (lower, upper) scale factors with 0 < lower <= upper, '
    f'or () for [1 - zoom, 1 + zoom]'
  ]
  c.augment.zoom_range = (0.7, 1.15)
  assert not config_checks.problems(c, device_count=1)


def test_batch_size_must_split_over_processes():
  c = base.get_config()
  c.train.batch_size = 18
  assert any('process count (4)' in p for p in config_checks.problems(c, process_count=4))


@pytest.mark.parametrize(
  'key, value, message',
  [
    ('data.std', (0.2, 0.0, 0.2), 'std > 0'),
    ('data.test_fraction', 1.0, 'test_fraction'),
    ('train.class_weights', (1.0, 2.0), 'class_weights has 2 values'),
    ('model.head_dropout', 1.0, 'head_dropout'),
    ('data.datasets', ('jiangxi', 'bcisc'), 'data.datasets'),
    ('model.refine_width', -1, 'model.refine_width=-1'),
    ('train.ema_decay', 1.0, 'train.ema_decay=1.0'),
    ('train.ema_decay', -0.1, 'train.ema_decay=-0.1'),
    ('eval.decode', 'max', 'eval.decode'),
  ],
)
def test_single_problems(key, value, message):
  c = base.get_config()
  section, name = key.split('.')
  c[section][name] = value
  assert any(message in p for p in config_checks.problems(c))


def test_dataset_repeats_need_one_per_dataset():
  c = base.get_config()
  c.data.dataset_repeats = (1,)
  assert any('data.dataset_repeats=(1,)' in p for p in config_checks.problems(c))
  c.data.dataset_repeats = (1, 0)
  assert any('data.dataset_repeats=(1, 0)' in p for p in config_checks.problems(c))
  c.data.dataset_repeats = (1, 3)
  assert config_checks.problems(c) == []


def test_patch_size_must_fit_the_image():
  c = base.get_config()
  c.model.patch_size = 8
  c.data.image_size = 120  # needs 8 * 2**4 = 128
  assert any('with model.patch_size=8 (needs >= 128' in p for p in config_checks.problems(c))


@pytest.mark.parametrize(
  'cell_types, message',
  [
    (('neutrophil', 'blast'), "['blast'] not a cell type; the types are ('neutrophil', "),
    (('basophil', 'basophil'), "['basophil'] listed twice"),
    ((), 'data.cell_types is empty'),
  ],
)
def test_bad_cell_types_are_named(cell_types, message):
  c = base.get_config()
  c.data.cell_types = cell_types
  assert any(message in p for p in config_checks.problems(c))


@pytest.mark.parametrize(
  'cell_types, cytoplasm, n_classes',
  [
    (('neutrophil', 'basophil', 'lymphocyte'), False, 4),
    (('neutrophil', 'lymphocyte', 'monocyte', 'eosinophil', 'basophil'), True, 7),
    (('monocyte',), True, 3),
  ],
)
def test_any_cell_types_and_the_cytoplasm_validate_and_size_class_weights(
  cell_types, cytoplasm, n_classes
):
  c = base.get_config()
  c.data.cell_types, c.data.cytoplasm = cell_types, cytoplasm
  assert config_checks.problems(c) == []
  c.train.class_weights = (1.0,) * n_classes
  assert config_checks.problems(c) == []
  c.train.class_weights = (1.0,) * (n_classes + 1)
  assert any(f'expected {n_classes}, one per class' in p for p in config_checks.problems(c))


def test_an_older_config_with_num_classes_loads_when_its_map_is_the_papers():
  saved = json.loads(base.get_config().to_json())
  del saved['data']['cytoplasm']
  saved['model']['num_classes'] = 4  # a knob of older versions
  filled = config_lib.with_defaults(saved)
  assert 'num_classes' not in filled['model'] and filled['data']['cytoplasm'] is False
  assert config_checks.problems(ml_collections.ConfigDict(filled)) == []
  # Its fixed map gave lymphocytes id 3; config order would give 2: refused, not misread.
  saved['data']['cell_types'] = ['neutrophil', 'lymphocyte']
  with pytest.raises(config_lib.ConfigError, match='fixed map 0 background, 1 neutrophil'):
    config_lib.with_defaults(saved)


def test_with_defaults_fills_keys_added_since_a_config_was_saved():
  saved = json.loads(base.get_config().to_json())
  del saved['xla_flags']
  del saved['model']['patch_size']
  saved['model']['base_width'] = 8
  filled = config_lib.with_defaults(saved)
  assert filled['xla_flags'] == '' and filled['model']['patch_size'] == 1
  assert filled['model']['base_width'] == 8  # what was saved stays
  assert config_checks.problems(ml_collections.ConfigDict(filled)) == []


@pytest.mark.parametrize('impl', config_keys.CHOICES['rng_impl'])
def test_every_accepted_prng_name_is_one_jax_takes(impl):
  import jax

  config = base.get_config()
  config.rng_impl = impl
  config_checks.validate(config, 1, 1)
  assert jax.random.key_impl(jax.random.key(0, impl=impl)) is not None


def test_an_index_past_a_tuples_end_is_one_line_naming_its_length():
  config = base.get_config()
  lines = config_flags.bad_index_overrides(
    ['--config.data.datasets[2]=x', '--config.data.datasets[1]=ok', '--config.seed=1'], config
  )
  assert lines == [
    'config.data.datasets[2]: data.datasets has 2 item(s) '
    "(('jiangxi', 'cellavision')); set the whole value instead, e.g. "
    '--config.data.datasets="(...)"'
  ]
