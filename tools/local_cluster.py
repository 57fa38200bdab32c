"""Runs one training or evaluation as N processes on this machine, as on N hosts.

    python tools/local_cluster.py --num_processes=2 -- --config=configs/smoke.py --workdir=runs/x

Everything after `--` goes to `python -m wcsegnet_jax.main` in every process; each also gets
--coordinator_address=127.0.0.1:PORT, --num_processes and its --process_id. Output lines are
prefixed with the process index; if one process fails, the others are stopped and the exit
status is the failed one's. A test of the multi-host path on one machine (CPU: gloo collectives).
"""

import sys

from absl import app
from absl import flags

from wcsegnet_jax.dev import local_cluster

flags.DEFINE_integer('num_processes', 2, 'How many processes to start.', lower_bound=1)
flags.DEFINE_integer('port', None, "The coordinator's port on 127.0.0.1 (default: a free one).")
FLAGS = flags.FLAGS


def main(argv):
  main_args = argv[1:]
  if not main_args:
    raise app.UsageError(
      'give the arguments of wcsegnet_jax.main after --, e.g. '
      '-- --config=configs/smoke.py --workdir=runs/x'
    )
  sys.exit(local_cluster.run(FLAGS.num_processes, main_args, port=FLAGS.port))


if __name__ == '__main__':
  app.run(main)
