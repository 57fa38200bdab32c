r"""Throughput, compile time, memory and MFU of the train and inference steps; input pipeline speed.

  python tools/benchmark.py --config=configs/wcseg.py --batch_sizes=16,64,256 \
      --dtypes=float32,bfloat16 --modes=train,infer,input --input_workers=0,1,2,4 \
      [--torch] --output=bench.json

The device ceilings (a large matrix product, an in-place array add) are measured first, in the
same process, and MFU is relative to the first. Model timings use synthetic batches on the
device; the input mode reads the configured data (`--config.data.raw_dir=...`). `--torch` adds
the same model in PyTorch (tools/torch_reference.py; optional, skipped when not installed), run
on the same device in the same process, and reports the JAX/PyTorch images/s ratios.
MFU is also given against the device's data-sheet dense bf16 peak (`mfu_datasheet`).

`--time_limit_s` bounds the run: a measurement that would start past it becomes a row marked
`skipped`. `--output` is rewritten (whole, atomically) after every measurement, with
`complete` false until the end, so a run killed from outside keeps what it measured.
See docs/benchmarks.md.
"""

import importlib.util
import json
import os
import pathlib
import shlex
import sys
import time
import traceback

from absl import app
from absl import flags
from absl import logging

from wcsegnet_jax.core import config_flags
from wcsegnet_jax.core import files


def _load_torch_reference():
  """tools/torch_reference.py, beside this file (it imports torch: optional)."""
  path = pathlib.Path(__file__).resolve().with_name('torch_reference.py')
  spec = importlib.util.spec_from_file_location('torch_reference', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


MODES = ('train', 'infer', 'input', 'torch_train', 'torch_infer')

FLAGS = flags.FLAGS
config_flags.define_config_file('config', None, 'Config file (configs/*.py).', lock_config=True)
flags.DEFINE_list(
  'batch_sizes', ['16', '64', '256'], 'Batch sizes (per device) of the model timings.'
)
flags.DEFINE_list('dtypes', ['float32', 'bfloat16'], 'Compute dtypes (config.model.dtype).')
flags.DEFINE_integer('steps', 50, 'Timed steps; the median is reported.')
flags.DEFINE_integer('warmup', 5, 'Untimed steps after compilation.')
flags.DEFINE_list('modes', ['train', 'infer', 'input'], f'Any of {", ".join(MODES)}.')
flags.DEFINE_bool('torch', False, 'Also time the PyTorch reference (torch_train, torch_infer).')
flags.DEFINE_bool('torch_compile', True, 'torch.compile the PyTorch model.')
flags.DEFINE_list(
  'input_workers',
  ['0', '1', '2', '4'],
  'Input pipeline worker processes to try (0: in this process).',
)
flags.DEFINE_integer('input_batches', 50, 'Timed batches of the input pipeline per setting.')
flags.DEFINE_integer(
  'matmul_size',
  0,
  'Side of the peak-FLOPs matrix product (0: by platform, 8192 on accelerators, 1024 on CPU).',
)
flags.DEFINE_string(
  'matmul_dtype',
  '',
  'Its dtype (empty: bfloat16 on accelerators, float32 on CPU, where bfloat16 is emulated).',
)
flags.DEFINE_integer('bandwidth_mib', 0, 'Array size of the bandwidth ceiling (0: by platform).')
flags.DEFINE_string('output', '', 'Write the report here as JSON.')
flags.DEFINE_float(
  'time_limit_s',
  0.0,
  'Start no measurement after this many seconds from the '
  'start (0: no limit); those left are rows marked skipped.',
)
flags.mark_flags_as_required(['config'])


_STARTED = time.monotonic()


def _out_of_time() -> bool:
  return bool(FLAGS.time_limit_s) and time.monotonic() - _STARTED > FLAGS.time_limit_s


def _guarded(what: str, fn, **keys) -> dict:
  """Runs one measurement; a failure (say, out of memory at a large batch) becomes a row, and
  so does one not started because `--time_limit_s` has passed."""
  if _out_of_time():
    logging.warning('Skipping %s %s: past --time_limit_s=%s', what, keys, FLAGS.time_limit_s)
    return {'mode': what, **keys, 'skipped': f'time limit ({FLAGS.time_limit_s:g} s)'}
  logging.info('Benchmarking %s %s', what, keys)
  try:
    return fn()
  except Exception as e:  # pylint: disable=broad-except
    logging.error('%s %s failed:\n%s', what, keys, traceback.format_exc())
    return {'mode': what, **keys, 'error': f'{type(e).__name__}: {e}'[:2000]}


def main(argv):
  del argv
  modes = list(dict.fromkeys(FLAGS.modes + (['torch_train', 'torch_infer'] if FLAGS.torch else [])))
  unknown = sorted(set(modes) - set(MODES))
  if unknown:
    raise app.UsageError(f'--modes: unknown {unknown}; choose from {", ".join(MODES)}')
  notes = []
  torch_modes = [m for m in modes if m.startswith('torch_')]
  torch_reference = None
  if torch_modes:
    try:
      torch_reference = _load_torch_reference()
    except ImportError as e:
      notes.append(
        f'{", ".join(torch_modes)} skipped: PyTorch is not importable ({e}); '
        'pip install torch to compare.'
      )
      logging.warning(notes[-1])
      modes = [m for m in modes if m not in torch_modes]
      torch_modes = []
  if torch_modes and 'XLA_PYTHON_CLIENT_PREALLOCATE' not in os.environ:
    # JAX would take 75% of the GPU's memory at start-up and never give it back; PyTorch needs
    # its share. Growing on demand instead is recorded in the report's environment.
    os.environ['XLA_PYTHON_CLIENT_PREALLOCATE'] = 'false'

  # JAX's GPU client reads the environment when it starts, at the first device query below.
  from wcsegnet_jax.dev import benchmarking  # pylint: disable=g-import-not-at-top
  from wcsegnet_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  from wcsegnet_jax.core import xla_flags  # pylint: disable=g-import-not-at-top

  config = FLAGS.config
  xla_flags.apply(config.xla_flags)  # the config's, as training sets them
  batch_sizes = sorted(int(b) for b in FLAGS.batch_sizes)
  report = {
    'command': shlex.join([sys.executable, *sys.argv]),
    'environment': benchmarking.environment(),
    'config': json.loads(config.to_json()),
    'steps': FLAGS.steps,
    'warmup': FLAGS.warmup,
    'time_limit_s': FLAGS.time_limit_s,
    'complete': False,
    'ceilings': {},
    'results': [],
    'ratios': [],
    'notes': notes,
  }
  datasheet = benchmarking.datasheet_peak(report['environment']['device_kind'])
  report['ceilings']['datasheet'] = datasheet
  datasheet_peak = datasheet['bf16_dense_flops_per_s'] if datasheet else None
  logging.info('Measuring the device ceilings.')
  report['ceilings']['matmul'] = benchmarking.matmul_peak_flops(
    FLAGS.matmul_size or None, FLAGS.matmul_dtype or None
  )
  report['ceilings']['memory_bandwidth'] = benchmarking.memory_bandwidth(
    FLAGS.bandwidth_mib * 2**20 or None
  )
  report['model_flops'] = benchmarking.model_flops(config)
  peak = report['ceilings']['matmul']['flops_per_s']
  results = report['results']
  _write(report)

  def add(row):
    """One measured (or failed, or skipped) row; --output is rewritten, so a kill keeps it."""
    results.append(row)
    benchmarking.add_torch_flops(results, peak, datasheet_peak)
    report['ratios'] = benchmarking.speed_ratios(results)
    _write(report)

  # PyTorch first: its caching allocator can hand its memory back (empty_cache), JAX's cannot.
  torch_fns = {'torch_train': 'benchmark_train_step', 'torch_infer': 'benchmark_inference'}
  for mode in torch_modes:
    fn = getattr(torch_reference, torch_fns[mode])
    for dtype in FLAGS.dtypes:
      for b in batch_sizes:
        add(
          _guarded(
            mode,
            lambda: fn(
              config, b, dtype, FLAGS.steps, FLAGS.warmup, use_compile=FLAGS.torch_compile
            ),
            batch_size=b,
            dtype=dtype,
          )
        )
        torch_reference.release_memory()
  jax_fns = {'train': benchmarking.benchmark_train_step, 'infer': benchmarking.benchmark_inference}
  for mode in (m for m in modes if m in jax_fns):
    for dtype in FLAGS.dtypes:
      for b in batch_sizes:  # ascending: the device's running peak memory stays meaningful
        add(
          _guarded(
            mode,
            lambda: jax_fns[mode](
              config, b, dtype, FLAGS.steps, FLAGS.warmup, peak_flops_per_s=peak
            ),
            batch_size=b,
            dtype=dtype,
          )
        )
  if 'input' in modes:
    datasets = None
    for workers in (int(w) for w in FLAGS.input_workers):

      def measure(workers=workers):
        nonlocal datasets
        datasets = datasets or input_pipeline.load_datasets(config.data)
        return {
          'mode': 'input',
          'num_workers': workers,
          'batch_size': config.train.batch_size,
          'num_batches': FLAGS.input_batches,
          'read_threads': config.input.read_threads,
          'images_per_s': benchmarking.benchmark_input(
            config, workers, FLAGS.input_batches, datasets=datasets
          ),
        }

      add(_guarded('input', measure, num_workers=workers, batch_size=config.train.batch_size))
  if hasattr(os, 'getloadavg'):  # other work during the run skews CPU timings
    report['environment']['load_average_1min_end'] = os.getloadavg()[0]
  report['complete'] = True
  print(benchmarking.format_report(report))
  if _write(report):
    logging.info('Wrote %s', FLAGS.output)


def _write(report: dict) -> bool:
  """The report as it stands to --output (atomically); False without --output."""
  if not FLAGS.output:
    return False
  path = pathlib.Path(FLAGS.output)
  path.parent.mkdir(parents=True, exist_ok=True)
  files.write_text_atomic(path, json.dumps(report, indent=1))
  return True


if __name__ == '__main__':
  app.run(main, flags_parser=config_flags.parse_flags)
