r"""Builds mosaics of real single-cell crops, predicts their cells, and scores the counting.

  python tools/make_mosaics.py --raw_dir=../shared/datasets/segmentation_WBC --subset=jiangxi \
      --out=/tmp/mosaics_jiangxi [--n_mosaics=10 --per_mosaic=4 --columns=2 --seed=0] \
      [--field_scale=1.0] [--workdir=DIR | --model=paper] [--no_predict]

Only the crops the model was tested on are used (the shipped model's info.json test list,
or with --workdir that run's data.json test split and its config's cell types), unless
--all_crops, so the figures are not on training images. The mosaics and their truth go to
OUT/mosaics/; predict's outputs (a shipped model without --workdir, --field_scale default 1.0
for Jiangxi, 0.4 for CellaVision) to OUT/predicted/; the score (`mosaics.score`) to
OUT/score.json and stdout.
"""

import json
import pathlib

from absl import app
from absl import flags

from wcsegnet_jax.core import errors
from wcsegnet_jax.core import files
from wcsegnet_jax.core import run_files
from wcsegnet_jax.dev import mosaics
from wcsegnet_jax.inference import output_folder
from wcsegnet_jax.inference import prediction
from wcsegnet_jax.model import shipped_model

FIELD_SCALES = {'jiangxi': 1.0, 'cellavision': 0.4}  # to the 120-pixel training scale

flags.DEFINE_string('raw_dir', None, 'Folder of the WBC Image Dataset ("Dataset 1/", ...).')
flags.DEFINE_enum('subset', 'jiangxi', list(FIELD_SCALES), 'Which crops.')
flags.DEFINE_string('out', None, 'Output folder (mosaics/, predicted/, score.json).')
flags.DEFINE_integer('n_mosaics', 10, 'Mosaics to build.', lower_bound=1)
flags.DEFINE_integer('per_mosaic', 4, 'Crops per mosaic.', lower_bound=1)
flags.DEFINE_integer('columns', 2, 'Crops per mosaic row.', lower_bound=1)
flags.DEFINE_integer(
  'gap', None, 'Pixels between crops; default a sixth of the crop side.', lower_bound=0
)
flags.DEFINE_integer('seed', 0, 'Seed of the crop draws.')
flags.DEFINE_bool('all_crops', False, 'Use every crop, training ones too.')
flags.DEFINE_float('field_scale', None, 'predict --field_scale; default by subset.')
flags.DEFINE_string('workdir', None, "Predict with this workdir's model, not a shipped one.")
flags.DEFINE_string('model', None, "A shipped model by name or folder (default: predict's).")
flags.DEFINE_bool('no_predict', False, 'Only build the mosaics.')
flags.mark_flags_as_required(['raw_dir', 'out'])
FLAGS = flags.FLAGS


def test_crops_of_the_model(
  workdir: str | None, subset: str, model: str | None = None
) -> tuple[list[str], list[str]]:
  """(test image ids, cell types) of the model that predicts: a run's (its data.json and
  config.json) or a shipped model's (its info.json and config)."""
  if workdir is None:
    folder = shipped_model.model_dir(model)
    return (
      shipped_model.load_info(folder)['images'][subset]['test'],
      list(shipped_model.load_config(folder).data.cell_types),
    )
  workdir = pathlib.Path(workdir)
  data_file = workdir / run_files.DATA_FILE
  record = json.loads(data_file.read_text()) if data_file.exists() else None
  config = run_files.load_saved_config(workdir)
  if record is None or config is None or subset not in record:
    raise errors.UserError(
      f'{workdir}: no {run_files.DATA_FILE} with a {subset} test split '
      f'or no {run_files.CONFIG_FILE}; give --all_crops to use every crop'
    )
  return record[subset]['test'], list(config['data']['cell_types'])


def main(argv):
  del argv
  if FLAGS.model and FLAGS.workdir:
    raise app.UsageError('give --model (a shipped model) or --workdir (a run), not both')
  with errors.user_errors_as_messages():
    _make_and_score(pathlib.Path(FLAGS.out))


def _make_and_score(out: pathlib.Path) -> None:
  ids, cell_types = None, None
  if not FLAGS.all_crops:
    ids, cell_types = test_crops_of_the_model(FLAGS.workdir, FLAGS.subset, FLAGS.model)
  crops = mosaics.load_crops(pathlib.Path(FLAGS.raw_dir), FLAGS.subset, ids, cell_types)
  if not crops:
    raise errors.DataError(f'no {FLAGS.subset} crops in {FLAGS.raw_dir} to build mosaics from')
  gap = FLAGS.gap if FLAGS.gap is not None else crops[0].image.shape[0] // 6
  truth = mosaics.write_mosaics(
    crops, out / 'mosaics', FLAGS.n_mosaics, FLAGS.per_mosaic, FLAGS.columns, gap, FLAGS.seed
  )
  print(
    f'wrote {len(truth)} mosaics of {FLAGS.per_mosaic} of {len(crops)} crops to {out / "mosaics"}'
  )
  if FLAGS.no_predict:
    return
  scale = FLAGS.field_scale if FLAGS.field_scale is not None else FIELD_SCALES[FLAGS.subset]
  prediction.run(
    [str(out / 'mosaics')],
    prediction.PredictOptions(
      output=out / 'predicted',
      workdir=FLAGS.workdir,
      model=FLAGS.model,
      overwrite=True,
      field_scale=scale,
    ),
  )
  cells_csv = out / 'predicted' / output_folder.CELLS_FILE
  result = mosaics.score(truth, mosaics.read_cells_csv(cells_csv))
  result = {'subset': FLAGS.subset, 'field_scale': scale, 'crops': len(crops), **result}
  files.write_json_atomic(out / 'score.json', result)
  print(json.dumps({k: v for k, v in result.items() if k != 'per_mosaic'}, indent=1))


if __name__ == '__main__':
  app.run(main)
