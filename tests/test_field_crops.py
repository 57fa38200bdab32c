"""Fine-tuning on typed fields: pseudo-labels from the model inside the lab's boxes, crops read
as the folder source, and a run that starts from the initial model's parameters."""

import json

import numpy as np
import pytest

import fixtures
import test_evaluate
from wcsegnet_jax.core import errors
from wcsegnet_jax.core import classes
from wcsegnet_jax.core import config_checks
from wcsegnet_jax.data import typed_fields
from wcsegnet_jax.inference import segmenter
from wcsegnet_jax.training import field_crops
from wcsegnet_jax.training import train

FIVE = classes.class_table(classes.ALL_CELL_TYPES, cytoplasm=True)


@pytest.fixture(scope='session')
def tiny_model(tmp_path_factory):
  return test_evaluate.trained_tiny_model(tmp_path_factory)


def test_pseudo_labels_take_the_labs_type_inside_its_box_only():
  pred = np.zeros((40, 60), np.int32)
  pred[5:15, 5:15] = FIVE.type_id('lymphocyte')  # the typed cell's nucleus, typed otherwise
  pred[3:5, 3:17] = FIVE.cytoplasm_id
  pred[25:35, 40:50] = FIVE.type_id('neutrophil')  # a red cell taken for a nucleus: no box
  field = typed_fields.TypedField(None, (typed_fields.TypedCell('eosinophil', (4, 4, 36, 36)),))
  labels = field_crops.pseudo_label_map(pred, field, 0.5, FIVE)  # box (2, 2, 18, 18) at 0.5
  assert (labels[5:15, 5:15] == FIVE.type_id('eosinophil')).all()
  assert (labels[3:5, 3:17] == FIVE.cytoplasm_id).all()
  assert (labels[25:35, 40:50] == 0).all() and labels[20:, :].max() == 0


def test_crop_windows_stay_inside_and_small_images_are_mirrored():
  assert field_crops.window(centre=5, size=32, length=100) == 0
  assert field_crops.window(centre=95, size=32, length=100) == 68
  assert field_crops.window(centre=50, size=32, length=100) == 34
  small = np.arange(20 * 10).reshape(20, 10)
  out = field_crops.crop(small, 0, 0, 32)
  assert out.shape == (32, 32) and (out[:20, :10] == small).all()


def _field_folder(tmp_path, rng, size):
  """Two fields, each with two drawn cells at known places, typed in truth.csv."""
  rows, root = [], tmp_path / 'lab'
  (root / 'fields').mkdir(parents=True)
  for k, types in enumerate((('neutrophil', 'basophil'), ('lymphocyte', 'neutrophil'))):
    image = np.zeros((size * 2, size * 3, 3), np.uint8) + np.array([230, 190, 200], np.uint8)
    for j, cell_type in enumerate(types):
      mask = fixtures.cell_mask(rng, size)
      image[size // 2 : size // 2 + size, j * size * 2 : j * size * 2 + size] = fixtures.cell_image(
        rng, mask
      )
      rows.append(
        f'f{k}.png,{cell_type},{j * size * 2},{size // 2},{j * size * 2 + size},{size // 2 + size}'
      )
    fixtures.write_rgb(root / 'fields' / f'f{k}.png', image)
  (root / 'truth.csv').write_text('file,type,xmin,ymin,xmax,ymax\n' + '\n'.join(rows) + '\n')
  return root


def _oracle_field(self, image, scale, standardized=False):
  """Probabilities that see the drawn nuclei (dark purple) as neutrophil nuclei."""
  table = classes.table_of(self.config.data)
  nucleus = (image[..., 0] < 160) & (image[..., 2] > 110)
  probs = np.zeros(image.shape[:2] + (table.num_classes,), np.float32)
  probs[..., 0] = ~nucleus
  probs[..., table.type_id('neutrophil')] = nucleus
  return probs


@pytest.mark.slow
def test_fine_tuning_trains_on_pseudo_labelled_crops_from_the_initial_model(
  tiny_model, tmp_path, monkeypatch
):
  size = 32
  lab = _field_folder(tmp_path, np.random.default_rng(0), size)
  monkeypatch.setattr(segmenter.Segmenter, 'field', _oracle_field)
  config = test_evaluate.tiny_config(
    tiny_model['raw_dir'],
    tmp_path / 'tfds',
    **{
      'data.fields_dir': str(lab),
      'data.fields_scale': 1.0,
      'train.init_from': str(tiny_model['workdir']),
      'data.test_fraction': 0.0,
      'train.max_steps': 2,
      'train.ema_decay': 0.9,
    },
  )  # two trees of parameters
  workdir = tmp_path / 'finetuned'
  initial = train.initial_variables(config)
  state = train.train_and_evaluate(config, str(workdir))
  crops = workdir / field_crops.CROPS_DIR
  manifest = json.loads((crops / field_crops.MANIFEST).read_text())
  assert sorted(c['type'] for c in manifest['crops']) == [
    'basophil',
    'lymphocyte',
    'neutrophil',
    'neutrophil',
  ]
  table = classes.table_of(config.data)
  for entry in manifest['crops']:
    labels = fixtures.cv2.imread(str(crops / 'masks' / f'{entry["crop"]}.png'), 0)
    assert labels.shape == (size, size)
    assert set(np.unique(labels)) == {0, table.type_id(entry['type'])}
  saved = json.loads((workdir / 'config.json').read_text())
  assert saved['data']['datasets'] == ['folder'] and saved['data']['folder_dir'] == str(crops)
  assert int(state.step) == 2
  moved = [
    np.abs(np.asarray(a) - np.asarray(b)).max()
    for a, b in zip(train.jax.tree.leaves(state.params), train.jax.tree.leaves(initial['params']))
  ]
  assert max(moved) < 0.1  # two small steps from the initial model, not from a random one


def test_fields_dir_needs_a_model_to_start_from(tmp_path):
  config = test_evaluate.tiny_config(tmp_path, tmp_path, **{'data.fields_dir': str(tmp_path)})
  assert any('needs train.init_from' in line for line in config_checks.problems(config))
  with pytest.raises(errors.CheckpointError):
    train.initial_variables(
      test_evaluate.tiny_config(
        tmp_path, tmp_path, **{'train.init_from': str(tmp_path / 'no_such_workdir')}
      )
    )


@pytest.mark.parametrize('epochs', [0, 1])
def test_a_bad_row_of_the_labs_fields_stops_a_run_before_its_workdir_holds_anything(
  tiny_model, tmp_path, epochs
):
  """Found only at the typer's fit, a bad row would leave a checkpoint that predict takes
  for a fitted run."""
  lab = _field_folder(tmp_path, np.random.default_rng(0), 32)
  truth = lab / typed_fields.TRUTH_FILE
  truth.write_text(truth.read_text().replace('basophil', 'lymfocyte'))
  config = test_evaluate.tiny_config(
    tiny_model['raw_dir'],
    tmp_path / 'tfds',
    **{
      'data.fields_dir': str(lab),
      'train.init_from': str(tiny_model['workdir']),
      'train.num_epochs': epochs,
      'typer.fit': True,
    },
  )
  workdir = tmp_path / 'run'
  with pytest.raises(errors.DataError, match="unknown type 'lymfocyte'"):
    train.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()
