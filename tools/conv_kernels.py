r"""Each convolution of a config's net, timed alone: XLA's kernels beside PyTorch's.

  python tools/conv_kernels.py --config=configs/cpu.py [--batch_size=16] [--torch] \
      [--steps=20 --warmup=3] [--output=convs.json]

Lists every distinct `nn.Conv` of the model as the train step applies it (input shape, output
width, kernel, how often it occurs; the 2x2 upsampling is a matrix product, not listed) and
times its three passes (forward, input gradient, kernel gradient) in float32, each compiled
alone, with the config's XLA flags; `--torch` times
the same passes with PyTorch's library calls (oneDNN on a CPU) on the same cores. The totals,
weighted by occurrence, say how much of a train step the convolutions take in each library:
where the JAX/PyTorch gap of tools/benchmark.py comes from. See docs/benchmarks.md.
"""

import os
import pathlib
import shlex
import sys

from absl import app
from absl import flags
from absl import logging

from wcsegnet_jax.core import config_flags
from wcsegnet_jax.core import files

FLAGS = flags.FLAGS
config_flags.define_config_file('config', None, 'Config file (configs/*.py).', lock_config=True)
flags.DEFINE_integer('batch_size', 0, 'Batch of the timed convolutions (0: train.batch_size).')
flags.DEFINE_integer('steps', 20, 'Timed calls per pass; the median is reported.')
flags.DEFINE_integer('warmup', 3, 'Untimed calls per pass after compilation.')
flags.DEFINE_bool('torch', False, 'Also time PyTorch (tools/torch_reference.py).')
flags.DEFINE_string('output', '', 'Write the table here as JSON.')
flags.mark_flags_as_required(['config'])

_LABELS = ('fwd', 'dx', 'dk')  # benchmarking.CONV_PASSES in the table's header


def _row_text(layer: dict, libraries: list[str], passes: tuple[str, ...]) -> str:
  shape = 'x'.join(str(n) for n in layer['input_shape'])
  kernel = 'x'.join(str(n) for n in layer['kernel_size'])
  cells = [
    f'{shape:>16} {kernel:>4} {layer["features"]:>5} {layer["count"]:>3} {layer["gflop"]:>6.3f}'
  ]
  for library in libraries:
    cells.append(' '.join(f'{layer[library][p]:>9.2f}' for p in passes))
  return '  '.join(cells)


def format_table(report: dict) -> str:
  """The layers, then the per-step totals and, with PyTorch, the ratio."""
  libraries, passes = report['libraries'], tuple(report['passes'])
  head = f'{"input (NHWC)":>16} {"k":>4} {"out":>5} {"n":>3} {"GFLOP":>6}'
  for library in libraries:
    head += '  ' + ' '.join(f'{library + " " + label:>9}' for label in _LABELS)
  lines = [f'ms per call, median of {report["steps"]}; GFLOP of one pass', head, '-' * len(head)]
  lines += [_row_text(layer, libraries, passes) for layer in report['layers']]
  for library in libraries:
    total = report['totals_ms'][library]
    lines.append(
      f'{library}: {total["all"]:.1f} ms of convolutions per train step '
      f'(forward {total["forward"]:.1f}, input gradients {total["input_grad"]:.1f}, '
      f'kernel gradients {total["kernel_grad"]:.1f}), '
      f'{report["gflop_per_step"] / total["all"]:.3f} TFLOP/s'
    )
  if len(libraries) == 2:
    totals = report['totals_ms']
    lines.append(f'XLA / PyTorch time: {totals["xla"]["all"] / totals["torch"]["all"]:.2f}x')
  return '\n'.join(lines)


def main(argv):
  del argv
  from wcsegnet_jax.dev import benchmarking  # pylint: disable=g-import-not-at-top
  from wcsegnet_jax.core import xla_flags  # pylint: disable=g-import-not-at-top

  config = FLAGS.config
  xla_flags.apply(config.xla_flags)  # the config's, as training sets them
  torch_reference = None
  if FLAGS.torch:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    try:
      import torch_reference  # pylint: disable=g-import-not-at-top,import-outside-toplevel
    except ImportError as e:
      logging.warning('--torch ignored: PyTorch is not importable (%s)', e)
  batch_size = FLAGS.batch_size or config.train.batch_size
  libraries = ['xla'] + (['torch'] if torch_reference else [])
  layers = benchmarking.conv_layers(config, batch_size)
  for layer in layers:
    layer['gflop'] = benchmarking.conv_flops(layer) / 1e9
    layer['xla'] = benchmarking.benchmark_conv(layer, FLAGS.steps, FLAGS.warmup)
    if torch_reference:
      layer['torch'] = torch_reference.benchmark_conv(layer, FLAGS.steps, FLAGS.warmup)
  totals = {}
  for library in libraries:
    per_pass = {
      p: sum(layer[library][p] * layer['count'] for layer in layers)
      for p in benchmarking.CONV_PASSES
    }
    totals[library] = {**per_pass, 'all': sum(per_pass.values())}
  report = {
    'command': shlex.join([sys.executable, *sys.argv]),
    'environment': benchmarking.environment(),
    'batch_size': batch_size,
    'steps': FLAGS.steps,
    'warmup': FLAGS.warmup,
    'libraries': libraries,
    'passes': list(benchmarking.CONV_PASSES),
    'layers': layers,
    'totals_ms': totals,
    'gflop_per_step': 3 * sum(layer['gflop'] * layer['count'] for layer in layers),
  }
  print(format_table(report))
  if FLAGS.output:
    pathlib.Path(FLAGS.output).parent.mkdir(parents=True, exist_ok=True)
    files.write_json_atomic(FLAGS.output, report)


if __name__ == '__main__':
  app.run(main, flags_parser=config_flags.parse_flags)
