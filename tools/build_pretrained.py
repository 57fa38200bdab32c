r"""Rebuilds the pretrained model shipped in the package (wcsegnet_jax/pretrained/).

  python tools/build_pretrained.py --workdir=runs/pretrained \
      --config.data.raw_dir=/path/to/segmentation_WBC [--config=configs/cpu.py] \
      [--output=wcsegnet_jax/pretrained]

Trains the config (the CPU recipe, seed 0; ~15 minutes on 2 cores) on the train splits of the
configured datasets, or resumes/reuses the run already in --workdir, then exports the last
checkpoint's parameters and BatchNorm statistics as stored (float16 where they fit), evaluates
*those stored weights* on every test split, and writes config.json, variables.msgpack and
info.json (metrics, the images that trained it, this command, the data's licence) to --output;
with typer.fit, a cell typer fitted on the stored weights too (tools/fit_cell_typer.py fits one
for a model already built).
"""

import datetime
import os
import pathlib
import platform
import shlex
import sys

from absl import app
from absl import flags
import jax

from wcsegnet_jax.core import classes
from wcsegnet_jax.core import config_flags
from wcsegnet_jax.core import errors
from wcsegnet_jax.core import xla_flags
from wcsegnet_jax.data import input_pipeline
from wcsegnet_jax.data import tfds_builder
from wcsegnet_jax.evaluation import evaluate
from wcsegnet_jax.model import models
from wcsegnet_jax.model import restore
from wcsegnet_jax.model import shipped_model
from wcsegnet_jax.training import train
from wcsegnet_jax.training import typer_fitting

FLAGS = flags.FLAGS
config_flags.define_config_file('config', 'configs/cpu.py', 'Config to train.', lock_config=True)
flags.DEFINE_string('workdir', 'runs/pretrained', 'Training workdir (resumed if it holds a run).')
flags.DEFINE_string('output', str(shipped_model.PRETRAINED_DIR), 'Folder to export into.')

LICENCE = (
  'Trained on the WBC Image Dataset (Zheng et al., Micron 107, 2018; '
  'github.com/zxaoyou/segmentation_WBC), distributed under GPL-3.0. Whether weights '
  'learned from GPL-3.0 data are a derivative work is unsettled; we distribute them '
  'under GPL-3.0 too, so keep that licence when you redistribute them or models '
  'fine-tuned from them. The code of wcsegnet_jax is Apache-2.0.'
)


def split_ids(datasets) -> dict[str, dict[str, list[str]]]:
  """{dataset: {split: [file ids]}} from each build's split_ids.csv."""
  out = {}
  for d in datasets:
    rows = (pathlib.Path(d.builder.data_dir) / tfds_builder.SPLIT_IDS_FILE).read_text()
    ids = {}
    for line in rows.splitlines()[1:]:
      split, file_id, _ = line.split(',')
      ids.setdefault(split, []).append(file_id)
    out[d.name] = ids
  return out


def test_metrics(config, variables) -> dict[str, dict]:
  """The paper's metrics, per-class Dice and cell accuracy of `variables` on each test split."""
  device = evaluate.local_eval_device()
  eval_step = jax.jit(evaluate.make_eval_step(models.model_for(config), config))
  out = {}
  for name, _, source in evaluate.eval_sources(config):
    result = evaluate.evaluate_source(
      eval_step,
      variables,
      source,
      name,
      config.eval.batch_size,
      lambda b: jax.device_put(b, device),
    )
    summary = evaluate.summarize(result, classes.table_of(config.data))
    out[name] = {
      'n_images': summary['n_images'],
      **summary['paper'],
      'dice_per_class': summary['per_class']['dice'],
      'cell_accuracy': summary['cells']['cell_accuracy'],
    }
  return out


def main(argv):
  del argv
  config = FLAGS.config
  with errors.user_errors_as_messages():
    xla_flags.apply(config.xla_flags)
    train.train_and_evaluate(config, FLAGS.workdir)
    variables, step = restore.load_variables(config, FLAGS.workdir, 'latest')
    stored = shipped_model.as_stored(variables)
    info = {
      'name': config.name,
      'step': int(step),
      # The run's moving average of the parameters where it kept one (train.ema_decay,
      # eval.ema), else its last parameters.
      'averaged_parameters': restore.reads_average(config, FLAGS.workdir, 'latest'),
      'built': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'machine': f'{platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__} '
      f'({jax.default_backend()})',
      'command': 'python ' + shlex.join(sys.argv),
      'test_metrics': test_metrics(config, stored),
      'images': split_ids(input_pipeline.load_datasets(config.data)),
      'licence': LICENCE,
    }
    out = shipped_model.export(config, stored, FLAGS.output, info)
    if config.typer.fit:  # refitted on the stored weights, which predict will use
      typer = typer_fitting.fit(config, stored, input_pipeline.load_datasets(config.data))
      typer.info.update(built=info['built'], command=info['command'])
      typer.save(out)
  size = (out / shipped_model.VARIABLES_FILE).stat().st_size
  print(f'wrote {out} ({size / 1e6:.1f} MB of variables, step {step})')
  for name, m in info['test_metrics'].items():
    print(
      f'  {name}: Dice {m["dice"]:.4f}, mIoU {m["miou"]:.4f}, '
      f'cell accuracy {m["cell_accuracy"]:.4f} ({m["n_images"]} test images)'
    )


if __name__ == '__main__':
  app.run(main, flags_parser=config_flags.parse_flags)
