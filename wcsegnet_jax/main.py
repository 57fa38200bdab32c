"""Command line: `python -m wcsegnet_jax.main --config=configs/wcseg.py --workdir=DIR`.

Training ends with the evaluation `--mode=evaluate` writes and a summary of where it is."""

import time

from absl import app
from absl import flags
from absl import logging

from wcsegnet_jax.core import config_flags
from wcsegnet_jax.core import errors
from wcsegnet_jax.core import logs
from wcsegnet_jax.core import xla_flags
from wcsegnet_jax.training import parallel
from wcsegnet_jax.training import workdirs

FLAGS = flags.FLAGS
config_flags.define_config_file('config', None, 'Config file (configs/*.py).', lock_config=True)
flags.DEFINE_string('workdir', None, 'Where checkpoints, logs and reports go.')
flags.DEFINE_enum('mode', 'train', ['train', 'evaluate'], 'Train (or resume), or evaluate.')
flags.DEFINE_string(
  'checkpoint',
  None,
  "For evaluate: 'best', 'latest', a step, a path, or "
  "'pretrained' (the model shipped in the package; with "
  '--config=configs/pretrained.py). Default: config.eval.checkpoint.',
)
# A multi-process run on one machine or a cluster without auto-detection (tools/local_cluster.py
# passes these); under SLURM and the like, --config.train.distributed=True alone suffices.
flags.DEFINE_string('coordinator_address', None, 'HOST:PORT of process 0, for every process.')
flags.DEFINE_integer('num_processes', None, 'How many processes the run has.')
flags.DEFINE_integer('process_id', None, "This process's index, 0..num_processes-1.")
flags.DEFINE_bool(
  'final_report',
  True,
  'After training: evaluate as --mode=evaluate does, draw '
  'curves.png and print a summary of where the results are.',
)
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  logs.quiet_library_logs()
  with errors.user_errors_as_messages():
    workdir = workdirs.resolve(FLAGS.workdir)  # '--workdir=' is an error, not the current folder
    xla_flags.apply(FLAGS.config.xla_flags)  # before anything starts JAX's backend
    parallel.initialize(
      FLAGS.config.train.distributed,
      FLAGS.coordinator_address,
      FLAGS.num_processes,
      FLAGS.process_id,
      FLAGS.config.train.join_timeout_s,
      FLAGS.config.train.heartbeat_timeout_s,
    )  # before any other JAX call
    if FLAGS.mode == 'train':
      errors.terminate_as_interrupt()
      from wcsegnet_jax.training import end_of_run
      from wcsegnet_jax.training import train

      started_at = time.time()
      train.train_and_evaluate(FLAGS.config, workdir)
      summary = (
        end_of_run.report(FLAGS.config, workdir, time.time() - started_at)
        if FLAGS.final_report
        else None
      )
      if summary:
        print('\n' + summary)
    else:
      from wcsegnet_jax.evaluation import evaluate

      workdirs.check_writable(workdir, folders=('eval',), create=False)
      evaluate.evaluate_checkpoint(FLAGS.config, str(workdir), FLAGS.checkpoint)


if __name__ == '__main__':
  app.run(main, flags_parser=config_flags.parse_flags)
