"""Command line: `python -m wcsegnet_jax.main --config=configs/wcseg.py --workdir=DIR`."""

from absl import app
from absl import flags
from absl import logging

from wcsegnet_jax import config_lib
from wcsegnet_jax import errors
from wcsegnet_jax import logs
from wcsegnet_jax import workdirs
from wcsegnet_jax import xla_flags

FLAGS = flags.FLAGS
config_lib.define_config_file('config', None, 'Config file (configs/*.py).', lock_config=True)
flags.DEFINE_string('workdir', None, 'Where checkpoints, logs and reports go.')
flags.DEFINE_enum('mode', 'train', ['train', 'evaluate'], 'Train (or resume), or evaluate.')
flags.DEFINE_string('checkpoint', None, "For evaluate: 'best', 'latest', a step, a path, or "
                    "'pretrained' (the model shipped in the package; with "
                    '--config=configs/pretrained.py). Default: config.eval.checkpoint.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  logs.quiet_library_logs()
  with errors.user_errors_as_messages():
    workdir = workdirs.resolve(FLAGS.workdir)   # '--workdir=' is an error, not the current folder
    xla_flags.apply(FLAGS.config.xla_flags)     # before anything starts JAX's backend
    if FLAGS.config.train.distributed:           # multi-host: before any other JAX call
      import jax
      jax.distributed.initialize()
    if FLAGS.mode == 'train':
      errors.terminate_as_interrupt()
      from wcsegnet_jax import train
      train.train_and_evaluate(FLAGS.config, workdir)
    else:
      from wcsegnet_jax import evaluate
      workdirs.check_writable(workdir, folders=('eval',), create=False)
      evaluate.evaluate_checkpoint(FLAGS.config, str(workdir), FLAGS.checkpoint)


if __name__ == '__main__':
  app.run(main, flags_parser=config_lib.parse_flags)
