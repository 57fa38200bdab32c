"""Command line: `python -m wcsegnet_jax.main --config=configs/wcseg.py --workdir=DIR`."""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from wcsegnet_jax import errors
from wcsegnet_jax import xla_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py).', lock_config=True)
flags.DEFINE_string('workdir', None, 'Where checkpoints, logs and reports go.')
flags.DEFINE_enum('mode', 'train', ['train', 'evaluate'], 'Train (or resume), or evaluate.')
flags.DEFINE_string('checkpoint', None, "For evaluate: 'best', 'latest', a step, a path, or "
                    "'pretrained' (the model shipped in the package; with "
                    '--config=configs/pretrained.py). Default: config.eval.checkpoint.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  # orbax logs every file it writes at INFO; keep ours readable.
  logging.get_absl_logger().addFilter(lambda record: 'orbax' not in record.pathname)
  with errors.user_errors_as_messages():
    xla_flags.apply(FLAGS.config.xla_flags)   # before anything starts JAX's backend
    if FLAGS.mode == 'train':
      from wcsegnet_jax import train
      train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    else:
      from wcsegnet_jax import evaluate
      evaluate.evaluate_checkpoint(FLAGS.config, FLAGS.workdir, FLAGS.checkpoint)


if __name__ == '__main__':
  app.run(main)
