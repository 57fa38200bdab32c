r"""Fits a cell typer (wcsegnet_jax/cells/cell_typing.py) for a shipped model; saves it beside it,
replacing the folder's (fit a copy of the folder to keep it). Needs the WBC Image Dataset
($WCSEG_DATA_DIR or --config.data.raw_dir).

  python tools/fit_cell_typer.py --model=differential \
      [--config.data.raw_dir=/path/to/segmentation_WBC] [--config.typer.views=6 ...]

The typer learns from the training split the model was built with (its info.json's images,
checked), each crop in `typer.views` augmented views, and is calibrated on held-out folds of
them; its test-split accuracy goes into cell_typer.json. A trained workdir gets its typer at the
end of training with `--config.typer.fit=True` instead.
"""

import datetime
import shlex
import sys

from absl import app
from absl import flags

from wcsegnet_jax.cells import cell_typing
from wcsegnet_jax.core import config_checks
from wcsegnet_jax.core import config_flags
from wcsegnet_jax.core import errors
from wcsegnet_jax.core import logs
from wcsegnet_jax.data import input_pipeline
from wcsegnet_jax.data import tfds_builder
from wcsegnet_jax.model import shipped_model
from wcsegnet_jax.training import typer_fitting

flags.DEFINE_string(
  'model', None, 'A shipped model (its name) or a model folder: its cell typer is replaced.'
)
config_flags.define_config_file(
  'config',
  'configs/pretrained.py',
  "The model's config (give "
  '--model, not this; its keys typer.*, augment.* and data.raw_dir may be '
  'overridden, on the command line or in a --flagfile; the rest, and the typer keys not '
  "given, are the model folder's).",
  example='typer.l2=0.1',
  lock_config=False,
)
flags.mark_flag_as_required('model')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  logs.quiet_library_logs()
  with errors.user_errors_as_messages():
    folder = shipped_model.model_dir(FLAGS.model)
    # The folder's own config, but for the data paths and the typer.* and augment.* keys given
    # (augment: the typer's views; the network's weights stay as they are).
    config = shipped_model.load_config(folder)
    config.data.update({k: FLAGS.config.data[k] for k in ('raw_dir', 'tfds_dir')})
    config_flags.apply_given(
      config,
      FLAGS.config,
      config_flags.given_keys(FLAGS['config']),
      sections=('typer', 'augment'),
    )
    config_checks.validate(config)
    variables = shipped_model.load_variables(config, folder)
    datasets = input_pipeline.load_datasets(config.data)
    trained_on = shipped_model.load_info(folder).get('images', {})
    for dataset in datasets:
      recorded = trained_on.get(dataset.name, {}).get('train')
      if recorded is not None and set(recorded) != set(
        tfds_builder.read_split_ids(dataset.builder).get('train', [])
      ):
        raise errors.UserError(
          f'{folder}: the {dataset.name} training split read now is not '
          f'the one the model was built with; check data.raw_dir'
        )
    typer = typer_fitting.fit(config, variables, datasets)
    typer.info.update(
      built=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      command='python ' + shlex.join(sys.argv),
    )
    typer.save(folder)
    print(
      f'wrote {folder / cell_typing.TYPER_FILE}: test accuracy '
      f'{typer_fitting.accuracy_text(typer)}, temperature {typer.temperature:.2f}'
    )


if __name__ == '__main__':
  app.run(main, flags_parser=config_flags.parse_flags)
