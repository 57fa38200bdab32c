"""The cell typer: pooled features, the linear classifier and its calibration, its round trip
through a folder, predict's use of it, and a fine-tuning run that fits only it."""

import csv
import dataclasses
import shutil

import numpy as np
import pytest

import test_evaluate
import test_field_crops
from wcsegnet_jax.cells import cell_typing
from wcsegnet_jax.cells import cells
from wcsegnet_jax.core import classes
from wcsegnet_jax.core import config_checks
from wcsegnet_jax.data import typed_fields
from wcsegnet_jax.inference import model_loading
from wcsegnet_jax.inference import output_folder
from wcsegnet_jax.inference import prediction
from wcsegnet_jax.inference import segmenter
from wcsegnet_jax.model import restore
from wcsegnet_jax.model import shipped_model
from wcsegnet_jax.training import train
from wcsegnet_jax.training import typer_fitting
from configs import cross_lab
from configs import differential
from configs import finetune_fields

FIVE = classes.class_table(classes.ALL_CELL_TYPES, cytoplasm=True)


@pytest.fixture(scope='module')
def tiny_model(tmp_path_factory):
  return test_evaluate.trained_tiny_model(tmp_path_factory)


def _blobs(rng, n_per_class, k=3, dim=6):
  centres = rng.normal(0, 4, (k, dim))
  x = np.concatenate([c + rng.normal(0, 1, (n_per_class, dim)) for c in centres])
  return x.astype(np.float32), np.repeat(np.arange(k), n_per_class)


def test_linear_typer_separates_classes_and_survives_a_folder(tmp_path):
  x, y = _blobs(np.random.default_rng(0), 40)
  typer = cell_typing.fit_linear(x, y, ('a', 'b', 'c'), l2=1e-3, steps=100)
  assert (typer.probabilities(x).argmax(1) == y).mean() > 0.95
  typer.temperature, typer.info = 1.7, {'levels': ['encoder0'], 'uncertain_below': 0.4}
  typer.save(tmp_path)
  back = cell_typing.LinearTyper.load(tmp_path)
  assert back.cell_types == ('a', 'b', 'c') and back.temperature == 1.7
  assert back.info == {'levels': ['encoder0'], 'uncertain_below': 0.4}
  np.testing.assert_allclose(back.probabilities(x), typer.probabilities(x), rtol=1e-6)
  assert cell_typing.LinearTyper.load(tmp_path / 'none') is None


def test_rare_classes_weigh_as_much_as_common_ones():
  rng = np.random.default_rng(1)
  x, y = _blobs(rng, 200, k=2, dim=2)
  keep = np.r_[np.arange(200), 200 + np.arange(5)]  # 200 of one class, 5 of the other
  typer = cell_typing.fit_linear(x[keep], y[keep], ('common', 'rare'), l2=1e-2, steps=100)
  rare = x[200:]
  assert (typer.probabilities(rare).argmax(1) == 1).mean() > 0.9


def test_temperature_undoes_overconfident_logits():
  rng = np.random.default_rng(2)
  calibrated = rng.normal(0, 1.5, (4000, 4))
  labels = np.array([rng.choice(4, p=np.exp(z) / np.exp(z).sum()) for z in calibrated])
  temperature = typer_fitting.best_temperature(3.0 * calibrated, labels, np.ones(len(labels)))
  assert 2.6 < temperature < 3.4


def test_pooling_weighs_map_positions_by_the_masks_share():
  size = 8
  feature_map = np.zeros((4, 4, 2), np.float32)  # the map of a model padding 8 -> 8
  feature_map[:2, :, 0] = 1.0  # top half of the image
  feature_map[..., 1] = 5.0
  top = np.zeros((size, size), bool)
  top[:4] = True
  np.testing.assert_allclose(cell_typing._pooled(feature_map, top, size), [1.0, 5.0])
  np.testing.assert_allclose(cell_typing._pooled(feature_map, ~top, size), [0.0, 5.0])
  np.testing.assert_allclose(cell_typing._pooled(feature_map, top & ~top, size), [0.0, 0.0])


def test_a_crop_is_centred_on_its_cell_and_mirrored_past_the_border():
  image = np.arange(20 * 30 * 3, dtype=np.int64).reshape(20, 30, 3)
  crop = cell_typing.crop_around(image, (15.0, 10.0), 8)
  assert crop.shape == (8, 8, 3) and (crop[4, 4] == image[10, 15]).all()
  corner = cell_typing.crop_around(image, (0.0, 0.0), 8)
  assert (corner[4, 4] == image[0, 0]).all() and (corner[3, 4] == image[0, 0]).all()


def test_levels_are_the_finest_stages_of_any_depth():
  config = differential.get_config()
  assert cell_typing.levels_of(config) == (
    'encoder0',
    'encoder1',
    'encoder2',
    'decoder3',
    'decoder2',
  )
  config.model.num_levels = 1
  assert cell_typing.levels_of(config) == ('encoder0', 'decoder0')
  config.typer.encoder_stages = config.typer.decoder_stages = 0
  assert cell_typing.levels_of(config) == ()
  assert not any('typer' in p for p in config_checks.problems(config))
  config.typer.decoder_stages = -1
  assert any('typer.decoder_stages=-1' in p for p in config_checks.problems(config))


def test_the_shipped_typer_types_by_colour_and_shape_and_a_labs_fit_adds_the_net():
  """Untrained on another lab's cells the net's features mislead (docs/changelog.md, "A typer of
  colour and shape"); fitted on a lab's own cells they help. The shipped typer was fitted as
  configs/cross_lab.py says, and configs/finetune_fields.py puts the net's stages back."""
  folder = shipped_model.model_dir('differential')
  shipped = cell_typing.LinearTyper.load(folder)
  assert shipped.info['levels'] == list(cell_typing.levels_of(cross_lab.get_config())) == []
  table = classes.table_of(shipped_model.load_config(folder).data)
  width = len(table.nucleus_ids) + 3 * 6 + len(cell_typing.SHAPE_FEATURES)
  assert shipped.weights.shape == (width, len(table.cell_types)) == (29, 5)
  assert cell_typing.levels_of(shipped_model.load_config(folder)) == ()
  assert len(cell_typing.levels_of(finetune_fields.get_config())) == 5


def test_features_of_the_tiny_model_have_one_width(tiny_model):
  config, variables = _tiny(tiny_model)
  features = cell_typing.CellFeatures(
    config, variables, cell_typing.levels_of(config), batch_size=4
  )
  crops = np.random.default_rng(0).integers(0, 255, (5, 32, 32, 3), dtype=np.uint8)
  x, found = features(crops)
  assert x.shape[0] == 5 and found.shape == (5,) and x.dtype == np.float32
  assert np.isfinite(x).all() and (x[~found] == 0).all()


def test_without_stages_the_features_are_the_colour_and_shape_of_the_full_ones(tiny_model):
  """A typer of no stages sees the same cell, colours and shape as one that pools the net's
  features too: the last columns of those, the same for each crop."""
  config, variables = _tiny(tiny_model)
  crops = np.random.default_rng(1).integers(0, 255, (6, 32, 32, 3), dtype=np.uint8)
  full, found = cell_typing.CellFeatures(config, variables, cell_typing.levels_of(config))(crops)
  bare, bare_found = cell_typing.CellFeatures(config, variables, ())(crops)
  table = classes.table_of(config.data)
  assert found.any(), 'the tiny model found no cell in these crops: nothing to compare'
  assert bare.shape == (6, len(table.nucleus_ids) + 3 * 6 + len(cell_typing.SHAPE_FEATURES))
  np.testing.assert_array_equal(bare_found, found)
  np.testing.assert_allclose(bare, full[:, -bare.shape[1] :], atol=1e-6)


def _tiny(tiny_model):
  config = model_loading.load_workdir_config(tiny_model['workdir'])
  variables, _ = restore.load_variables(config, str(tiny_model['workdir']), 'latest')
  return config, variables


def test_cells_whose_crops_show_no_cell_keep_their_voted_type(tiny_model):
  """A field's cell the typer's own pass does not find again (its crop shows no cell) keeps
  the type and confidence of its nucleus pixels' vote, also when no crop shows one."""
  config, variables = _tiny(tiny_model)
  types = classes.table_of(config.data).cell_types
  width = 5  # any: no crop reaches the linear typer
  linear = cell_typing.LinearTyper(
    types,
    np.zeros(width),
    np.ones(width),
    np.zeros((width, len(types))),
    np.zeros(len(types)),
    info={'levels': cell_typing.levels_of(config)},
  )
  typer = cell_typing.CellTyper(config, variables, linear)
  blank = np.full((64, 64, 3), 230, np.uint8)
  assert not typer.features(np.stack([blank[:32, :32]] * 2))[1].any()
  probs = typer.probabilities(blank, [(20.0, 20.0), (40.0, 40.0)])
  assert probs.shape == (2, len(types)) and np.isnan(probs).all()
  voted = cells.Cell((10, 10, 30, 30), (20.0, 20.0), False, 1, 0.8, 400, None, None, {})
  assert typer.retyped([voted], blank, (1.0, 1.0)) == [voted]


def test_recoloured_maps_give_each_nucleus_its_cells_type():
  pred = np.zeros((10, 20), np.uint8)
  pred[2:6, 2:6] = FIVE.type_id('neutrophil')
  pred[2:6, 12:16] = FIVE.type_id('lymphocyte')
  pred[1, 1:8] = FIVE.cytoplasm_id
  found, labels = cells.find_cells(
    pred, None, FIVE, cells.CellRules(min_nucleus_px=1, split_radius_px=0)
  )
  retyped = [dataclasses.replace(c, class_id=FIVE.type_id('eosinophil')) for c in found]
  out = cell_typing.recoloured(pred, labels, retyped, FIVE.nucleus_ids)
  assert set(np.unique(out[pred != pred.max()])) <= {0, FIVE.type_id('eosinophil')}
  assert (out[1, 1:8] == FIVE.cytoplasm_id).all() and (out[2:6, 2:6] == 4).all()


class _AlwaysBasophil:
  """A typer that calls every cell a basophil, at confidence 0.3: below its threshold."""

  uncertain_below = 0.5

  def retyped(self, found, image, to_training_scale):
    assert image.ndim == 3 and min(to_training_scale) > 0
    table = classes.table_of(self.config.data)
    return [
      dataclasses.replace(c, class_id=table.type_id('basophil'), confidence=0.3) for c in found
    ]


def test_predict_types_cells_and_draws_masks_with_the_typer(tiny_model, tmp_path, monkeypatch):
  config, variables = _tiny(tiny_model)
  image = np.zeros((32, 32, 3), np.uint8) + 220
  image[10:22, 10:22] = (90, 40, 140)
  test_field_crops.fixtures.write_rgb(tmp_path / 'cell.png', image)

  def oracle(self, images):
    table = classes.table_of(self.config.data)
    probs = np.zeros((len(images), 32, 32, table.num_classes), np.float32)
    probs[..., 0] = 1
    probs[:, 10:22, 10:22, 0] = 0
    probs[:, 10:22, 10:22, table.type_id('neutrophil')] = 1
    return list(probs)

  monkeypatch.setattr(segmenter.Segmenter, 'crops', oracle)
  typer = _AlwaysBasophil()
  typer.config = config
  rules = cells.CellRules(min_nucleus_px=10, min_counted_nucleus_px=10)
  prediction.predict_files(
    config,
    variables,
    [tmp_path / 'cell.png'],
    prediction.PredictOptions(output=tmp_path / 'out', cell_rules=rules),
    typer=typer,
  )
  rows = list(csv.DictReader(open(tmp_path / 'out' / output_folder.CELLS_FILE)))
  assert [(r['predicted_type'], r['review']) for r in rows] == [('basophil', '1')]
  counts = {
    r['cell_type']: r['count']
    for r in csv.DictReader(open(tmp_path / 'out' / output_folder.DIFFERENTIAL_FILE))
  }
  assert counts['uncertain'] == '1' and counts['basophil'] == '0' and counts['total'] == '1'
  mask = test_field_crops.fixtures.cv2.imread(str(tmp_path / 'out' / 'cell_mask.png'))[..., ::-1]
  table = classes.table_of(config.data)
  basophil = table.colorize(np.array([[table.type_id('basophil')]], np.uint8))[0, 0]
  assert (mask[16, 16] == basophil).all()


def test_no_epochs_needs_a_model_and_a_typer(tmp_path):
  config = test_evaluate.tiny_config(tmp_path, tmp_path, **{'train.num_epochs': 0})
  assert any('train.num_epochs=0' in p for p in config_checks.problems(config))
  config.train.init_from, config.typer.fit = str(tmp_path), True
  assert not any('num_epochs' in p for p in config_checks.problems(config))


def test_a_labs_cells_are_fitted_in_turned_views_sharing_their_weight(
  tiny_model, tmp_path, monkeypatch
):
  lab = test_field_crops._field_folder(tmp_path, np.random.default_rng(0), 32)
  monkeypatch.setattr(segmenter.Segmenter, 'field', test_field_crops._oracle_field)
  config = test_evaluate.tiny_config(tiny_model['raw_dir'], tmp_path / 'tfds')
  variables, _ = restore.load_variables(config, str(tiny_model['workdir']), 'latest')
  segment = segmenter.Segmenter(config, variables, tta=False)
  typed = typed_fields.read_typed_fields(lab, cell_types=classes.table_of(config.data).cell_types)
  one = typer_fitting.field_crops(segment, typed, 20.0)
  four = typer_fitting.field_crops(segment, typed, 20.0, views=4)
  assert len(one.labels) == 4 and len(four.labels) == 16
  np.testing.assert_array_equal(four.crops[0::4], one.crops)
  np.testing.assert_array_equal(four.crops[1::4], one.crops[:, :, ::-1])
  np.testing.assert_array_equal(four.crops[2::4], one.crops[:, ::-1])
  np.testing.assert_array_equal(four.crops[3::4], np.rot90(one.crops, axes=(1, 2)))
  np.testing.assert_array_equal(four.labels, np.repeat(one.labels, 4))
  np.testing.assert_array_equal(four.groups, np.repeat(one.groups, 4))  # folds keep them together
  assert four.weights.sum() == pytest.approx(one.weights.sum()) == 80.0
  config.typer.field_views = 5
  assert any('typer.field_views=5' in p for p in config_checks.problems(config))


@pytest.mark.slow
def test_fine_tuning_only_the_typer_keeps_the_network_and_writes_a_typer(
  tiny_model, tmp_path, monkeypatch
):
  lab = test_field_crops._field_folder(tmp_path, np.random.default_rng(0), 32)
  monkeypatch.setattr(segmenter.Segmenter, 'field', test_field_crops._oracle_field)
  config = test_evaluate.tiny_config(
    tiny_model['raw_dir'],
    tmp_path / 'tfds',
    **{
      'data.fields_dir': str(lab),
      'train.init_from': str(tiny_model['workdir']),
      'train.num_epochs': 0,
      'typer.fit': True,
      'typer.views': 2,
    },
  )
  workdir = tmp_path / 'typer_only'
  seen = {}
  oof, scored = typer_fitting.out_of_fold_logits, typer_fitting.lab_type_right

  def spy_oof(features, data, *args, **kwargs):
    seen['groups'], seen['logits'] = data.groups, oof(features, data, *args, **kwargs)
    return seen['logits']

  def spy_scored(logits, *args):
    seen['lab_logits'] = logits
    return scored(logits, *args)

  monkeypatch.setattr(typer_fitting, 'out_of_fold_logits', spy_oof)
  monkeypatch.setattr(typer_fitting, 'lab_type_right', spy_scored)
  initial = train.initial_variables(config)
  state = train.train_and_evaluate(config, str(workdir))
  assert int(state.step) == 0
  restored, step = restore.load_variables(config, str(workdir), 'latest')
  assert step == 0
  for a, b in zip(
    train.jax.tree.leaves(restored['params']), train.jax.tree.leaves(initial['params'])
  ):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  typer = cell_typing.LinearTyper.load(workdir)
  assert typer.cell_types == classes.table_of(config.data).cell_types
  assert typer.info['lab_fields'] == str(lab) and 0.25 <= typer.temperature <= 8
  assert typer.weights.shape[0] > 0  # fitted on features of cells found, not on none
  assert not (workdir / 'field_crops').exists()  # no pseudo-labelled crops without epochs
  typed = typed_fields.read_typed_fields(lab)
  lab_rows = np.isin(seen['groups'], [f.path.name for f in typed])  # the lab's rows, by name
  assert 0 < lab_rows.sum() < len(lab_rows)
  np.testing.assert_array_equal(seen['lab_logits'], seen['logits'][lab_rows])
  assert typer.info['lab_cross_validated']['cells'] == sum(len(f.cells) for f in typed)


@pytest.mark.slow
def test_a_typer_only_fit_scores_the_starting_models_typer_on_the_labs_cells(
  tiny_model, tmp_path, monkeypatch
):
  """The fit also types the lab's cells with the typer of the model it starts from, as predict
  would (untrained on them): here one that calls every cell a neutrophil, 2 of the 4."""
  lab = test_field_crops._field_folder(tmp_path, np.random.default_rng(0), 32)
  monkeypatch.setattr(segmenter.Segmenter, 'field', test_field_crops._oracle_field)
  start = tmp_path / 'start'
  shutil.copytree(tiny_model['workdir'], start)
  config = test_evaluate.tiny_config(
    tiny_model['raw_dir'],
    tmp_path / 'tfds',
    **{
      'data.fields_dir': str(lab),
      'train.init_from': str(start),
      'train.num_epochs': 0,
      'typer.fit': True,
      'typer.views': 1,
    },
  )
  types = classes.table_of(config.data).cell_types
  width = 4  # any: its probabilities are replaced below
  cell_typing.LinearTyper(
    types,
    np.zeros(width),
    np.ones(width),
    np.zeros((width, len(types))),
    np.zeros(len(types)),
    info={'levels': [], 'uncertain_below': 0.5, 'crop_color': 'crop'},
  ).save(start)
  neutrophil = np.eye(len(types), dtype=np.float32)[types.index('neutrophil')]
  monkeypatch.setattr(
    cell_typing.CellTyper,
    'probabilities',
    lambda self, image, centres: np.tile(neutrophil, (len(centres), 1)),
  )
  train.train_and_evaluate(config, str(tmp_path / 'fitted'))
  typer = cell_typing.LinearTyper.load(tmp_path / 'fitted')
  assert typer.info['lab_before'] == {'cells': 4, 'accuracy': 0.5}
  # A starting typer fitted on a lab's cells already is not untrained on them: not scored.
  config.train.init_from = str(tmp_path / 'fitted')
  variables = train.initial_variables(config)
  assert typer_fitting._typer_before(config, variables) is None


def test_a_labs_cells_are_scored_once_each_by_their_first_view():
  labels = np.repeat([0, 1, 2], 4)
  logits = np.zeros((12, 3), np.float32)
  logits[np.arange(12), labels] = 1.0  # every view right...
  logits[4, 1], logits[4, 0] = 0.0, 2.0  # ...but the second cell's first view
  logits[9, 0] = 5.0  # a later view of the third cell does not count
  got = typer_fitting.lab_type_right(logits, labels, views=4)
  assert got == {'cells': 3, 'accuracy': pytest.approx(2 / 3)}
  found = np.ones(12, bool)
  found[0] = False  # the first cell's crop showed no cell: wrong, whatever its logits say
  got = typer_fitting.lab_type_right(logits, labels, views=4, found=found)
  assert got == {'cells': 3, 'accuracy': pytest.approx(1 / 3)}


def test_the_starting_typer_is_scored_as_predict_types_and_a_miss_counts_wrong():
  class Typer:
    def probabilities(self, image, centres):
      del image
      probs = np.eye(3, dtype=np.float32)[[0, 1, 2]][: len(centres)]
      probs[1] = np.nan  # the second crop shows no cell
      return probs

  right = []
  typer_fitting._scorer(Typer(), right)(None, [(0, 0)] * 3, [0, 1, 1])
  assert right == [True, False, False]


@pytest.mark.parametrize(
  'init_from, keep',
  [
    ('pretrained', 'predict without --workdir'),
    ('pretrained:differential', 'predict --model=differential'),
    ('runs/cross_lab', 'predict --workdir=runs/cross_lab'),
  ],
)
def test_a_fit_worse_than_its_start_warns_with_the_predict_flag_that_keeps_it(
  init_from, keep, caplog
):
  info = {
    'lab_cross_validated': {'cells': 200, 'accuracy': 0.7},
    'lab_before': {'cells': 200, 'accuracy': 0.9},
  }
  with caplog.at_level('INFO'):
    typer_fitting.log_lab_scores(info, init_from)
  warnings = [r.getMessage() for r in caplog.records if r.levelname == 'WARNING']
  assert len(warnings) == 1 and warnings[0].endswith(keep) and '0.700 against 0.900' in warnings[0]
  caplog.clear()
  info['lab_before']['accuracy'] = 0.7  # as good: no warning
  with caplog.at_level('INFO'):
    typer_fitting.log_lab_scores(info, init_from)
  assert not [r for r in caplog.records if r.levelname == 'WARNING']
  assert any('0.700 right of 200' in r.getMessage() for r in caplog.records)


def test_a_fit_on_few_typed_cells_warns_that_its_figures_are_rough(caplog):
  info = {
    'lab_cross_validated': {'cells': 12, 'accuracy': 0.75},
    'lab_before': {'cells': 12, 'accuracy': 0.667},
  }
  with caplog.at_level('INFO'):
    typer_fitting.log_lab_scores(info, 'pretrained')
  warnings = [r.getMessage() for r in caplog.records if r.levelname == 'WARNING']
  assert len(warnings) == 1 and 'Only 12 typed cells' in warnings[0] and '8.3%' in warnings[0]
  caplog.clear()
  for n in (typer_fitting.FEW_LAB_CELLS, 500):
    info['lab_cross_validated']['cells'] = info['lab_before']['cells'] = n
    with caplog.at_level('INFO'):
      typer_fitting.log_lab_scores(info, 'pretrained')
  assert not [r for r in caplog.records if r.levelname == 'WARNING']


def _typer_fitted_on(lab_cells: int | None) -> cell_typing.LinearTyper:
  info = {'lab_fields': 'my_lab'}
  if lab_cells:
    info['lab_cross_validated'] = {'cells': lab_cells, 'accuracy': 0.8}
  k = len(classes.ALL_CELL_TYPES)
  return cell_typing.LinearTyper(
    classes.ALL_CELL_TYPES, np.zeros(3), np.ones(3), np.zeros((3, k)), np.zeros(k), info=info
  )


def test_refitting_on_other_cells_says_the_workdirs_typer_is_replaced(tmp_path, caplog):
  _typer_fitted_on(12).save(tmp_path)
  with caplog.at_level('INFO'):
    typer_fitting._log_if_replacing(tmp_path, _typer_fitted_on(12))  # the same cells: quiet
    assert not caplog.records
    typer_fitting._log_if_replacing(tmp_path, _typer_fitted_on(8))
    typer_fitting._log_if_replacing(tmp_path / 'no_typer_yet', _typer_fitted_on(8))
  (message,) = [r.getMessage() for r in caplog.records]
  assert 'fitted on 12 typed cells of my_lab, is replaced by one fitted on 8' in message
  caplog.clear()
  retyped = _typer_fitted_on(12)  # as many cells, one retyped: another digest of the rows
  retyped.info['lab_fields_digest'] = 'another'
  with caplog.at_level('INFO'):
    typer_fitting._log_if_replacing(tmp_path, retyped)
  (message,) = [r.getMessage() for r in caplog.records]
  assert message.endswith("(the lab's fields or truth.csv changed).")
  (tmp_path / cell_typing.TYPER_FILE).write_bytes(b'PK cut short')  # unreadable: no message
  typer_fitting._log_if_replacing(tmp_path, retyped)


def test_the_lab_fields_digest_changes_with_a_type_or_a_box(tmp_path):
  path = tmp_path / 'f.jpg'
  path.write_bytes(b'a field')
  field = typed_fields.TypedField(path, (typed_fields.TypedCell('neutrophil', (1, 2, 30, 40)),))
  digest = typer_fitting.lab_fields_digest([field])
  assert digest == typer_fitting.lab_fields_digest([field])
  for cell in (
    typed_fields.TypedCell('eosinophil', (1, 2, 30, 40)),
    typed_fields.TypedCell('neutrophil', (1, 2, 31, 40)),
  ):
    assert typer_fitting.lab_fields_digest([typed_fields.TypedField(path, (cell,))]) != digest


def test_lab_estimates_read_the_two_figures_and_whether_the_fit_warned():
  """What cross_lab.py finetune_cv records per fold beside the held-out scores."""
  fitted = {'cells': 10, 'accuracy': 0.7}
  assert typer_fitting.lab_estimates({}) == {}  # not fitted on a lab's cells
  assert typer_fitting.lab_estimates({'lab_cross_validated': fitted}) == {
    'cells': 10,
    'cross_validated': 0.7,
  }  # a starting typer that was not scored: nothing to warn against
  both = {'lab_cross_validated': fitted, 'lab_before': {'cells': 10, 'accuracy': 0.9}}
  assert typer_fitting.lab_estimates(both) == {
    'cells': 10,
    'cross_validated': 0.7,
    'before': 0.9,
    'warned': True,
  }
  both['lab_before']['accuracy'] = 0.6
  assert typer_fitting.lab_estimates(both)['warned'] is False
