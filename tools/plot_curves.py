"""Training curves of one or more workdirs in one PNG.

python tools/plot_curves.py --output=docs/curves.png name1=runs/a name2=runs/b
"""

import pathlib

from absl import app
from absl import flags

from wcsegnet_jax.evaluation import curves

flags.DEFINE_string('output', 'curves.png', 'PNG file to write.')


def main(argv):
  runs = dict(
    arg.split('=', 1) if '=' in arg else (pathlib.Path(arg).name, arg) for arg in argv[1:]
  )
  if not runs:
    raise app.UsageError('give one or more workdirs (optionally name=workdir)')
  curves.plot_runs({k: pathlib.Path(v) for k, v in runs.items()}, pathlib.Path(flags.FLAGS.output))
  print(f'wrote {flags.FLAGS.output}')


if __name__ == '__main__':
  app.run(main)
