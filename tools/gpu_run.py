r"""The one command for a GPU machine: install, check, benchmark, train, evaluate, report.

  tools/gpu_run.sh --out=DIR [--budget_s=540] [--dry_run] [--archive=FILE.tar.gz]

Within --budget_s seconds of its start, in this order (DEVELOPERS.md says how to run it):
  1. setup: installs the carried wheels (.whl/) offline if grain, TFDS or ml_collections are
     not importable, and checks that JAX sees a GPU (with --dry_run: the CPU);
  2. benchmark (short): tools/benchmark.py on the paper net, bf16 and float32 training and
     inference at batch 16, 64, 256, the input pipeline with 0-8 workers (benchmark.json),
     then the PyTorch reference's train step with torch.compile beside ours in one process,
     one per --torch_dtypes (benchmark_torch_<dtype>.json);
  3. training: each of --runs (`<config>_s<seed>`) as `python -m wcsegnet_jax.main`, its time
     limit what is left of the budget, then `--mode=evaluate` on both test splits;
  4. report: report.md (benchmark, Table 1 beside the paper's, what was cut), summary.json,
     curves.png, and each run's small files under runs/<name>/ (the layout of a workdir, so
     tools/summarize_runs.py reads them), logs under logs/.
Workdirs, checkpoints, TFDS builds and the compilation cache stay in a scratch folder outside
--out. A step that would overrun is stopped (SIGTERM, then SIGKILL) and recorded as cut; what
finished is kept. --dry_run does the same on a CPU with a tiny net and few steps, on the data
of --data_dir or, without any, on generated data (tests/fixtures.py).

This process itself imports only the standard library and absl until the report, so it runs
before the wheels are installed; every measurement runs in a subprocess that it can stop.
"""

import dataclasses
import importlib
import importlib.util
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time

from absl import app
from absl import flags

ROOT = pathlib.Path(__file__).resolve().parent.parent
# The data beside the checkout (developers' machines and, per the brief, the GPU machine), or a
# copy carried inside it.
DATA_CANDIDATES = (
  ROOT.parent / 'shared' / 'datasets' / 'segmentation_WBC',
  ROOT / 'shared' / 'datasets' / 'segmentation_WBC',
)
# Importable names the project needs that the GPU machine's image lacks (device-wheels.sh).
NEEDED_MODULES = ('grain', 'tensorflow_datasets', 'ml_collections', 'array_record', 'tensorboardX')
DEFAULT_RUNS = (
  'wcseg_s0',
  'unet_leakyrelu_s0',
  'unet_relu_s0',
  'wcseg_s1',
  'wcseg_s2',
  'wcseg_plus_s0',
)
# Table 1 rows of the paper (reports.PAPER_TABLE1) by our config name.
PAPER_METHOD = {
  'unet_relu': 'U-Net (ReLU)',
  'unet_leakyrelu': 'U-Net (LeakyReLU)',
  'wcseg': 'WCSegNet',
}
LOG_TAIL_BYTES = 256 * 1024  # of each subprocess's log copied to --out
# Files of a workdir copied to --out: small, and what tools/summarize_runs.py reads.
RUN_FILES = ('config.json', 'data.json', 'metrics.jsonl')
EVAL_FILES = ('metrics.json', 'report.md', 'per_image.csv')

FLAGS = flags.FLAGS
flags.DEFINE_string('out', None, 'Folder for everything that comes back (new or empty).')
flags.DEFINE_float('budget_s', 540.0, 'Seconds from the start by which everything has ended.')
flags.DEFINE_bool('dry_run', False, 'On the CPU, with a tiny net and few steps.')
flags.DEFINE_list(
  'runs',
  list(DEFAULT_RUNS),
  'Training runs in order, <config>_s<seed> (configs/<config>.py); later ones only if time allows.',
)
flags.DEFINE_multi_string(
  'override',
  [],
  'KEY=VALUE for every run (--config.KEY=VALUE), e.g. train.num_epochs=50; repeatable.',
)
flags.DEFINE_bool('skip_benchmark', False, 'Train only (a second lease, say).')
flags.DEFINE_float('bench_share', 0.35, 'Share of the budget the benchmarks may take.')
flags.DEFINE_list(
  'torch_dtypes',
  ['bfloat16'],
  'Dtypes of the PyTorch comparison, one process each (float32 too if the budget allows).',
)
flags.DEFINE_string(
  'data_dir',
  '',
  'The WBC Image Dataset; default $WCSEG_DATA_DIR, then '
  '../shared/datasets/segmentation_WBC, then shared/datasets/... inside the '
  'checkout; with --dry_run and none of these, generated data.',
)
flags.DEFINE_string(
  'scratch',
  '',
  'Workdirs, checkpoints, TFDS builds (default: a new folder '
  'in the temporary directory). Never inside --out.',
)
flags.DEFINE_string('wheels', str(ROOT / '.whl'), 'Wheels to install offline when needed.')
flags.DEFINE_string('site_dir', '/tmp/site', 'Where the wheels are installed (pip --target).')
flags.DEFINE_string(
  'archive',
  '',
  'Also write --out as this .tar.gz after every step (the GPU '
  'machine may return few files: one archive holds everything).',
)
flags.mark_flags_as_required(['out'])


@dataclasses.dataclass(frozen=True)
class Settings:
  """What a GPU run and a dry run differ in; every number here is a choice, said once."""

  bench_config: str
  model: tuple[str, ...]  # --config.* of the benchmarks and the runs (dry: a tiny net)
  train: tuple[str, ...]  # --config.* of the training runs only
  batch_sizes: tuple[int, ...]
  dtypes: tuple[str, ...]
  steps: int
  warmup: int
  input_workers: tuple[int, ...]
  input_batches: int
  bench_extra: tuple[str, ...]  # further benchmark.py flags
  torch_batch_sizes: tuple[int, ...]
  torch_compile: bool
  jax_bench_share: float  # of the benchmark time, before the PyTorch comparison
  default_train_workers: int  # grain workers when the benchmark found no faster count
  min_train_s: float  # a training run starts only with this much time to train
  eval_reserve_s: float  # kept for the evaluation after each training run
  final_reserve_s: float  # kept for the curves and the report
  grace_s: float  # SIGTERM to SIGKILL
  check_timeout_s: float


GPU = Settings(
  bench_config='configs/wcseg.py',
  model=(),
  # Checkpoints every 5 epochs: the paper net's state is 0.77 GB, and a cut run is
  # evaluated from its last checkpoint.
  train=('train.progress_bar=False', 'train.checkpoint_every_epochs=5', 'train.keep_checkpoints=1'),
  batch_sizes=(16, 64, 256),
  dtypes=('bfloat16', 'float32'),
  steps=20,
  warmup=3,
  input_workers=(0, 1, 2, 4, 8),
  input_batches=50,
  bench_extra=(),
  torch_batch_sizes=(64,),
  torch_compile=True,
  jax_bench_share=0.6,
  default_train_workers=4,
  min_train_s=90.0,
  eval_reserve_s=60.0,
  final_reserve_s=15.0,
  grace_s=15.0,
  check_timeout_s=180.0,
)

DRY = Settings(
  bench_config='configs/smoke.py',
  # configs/smoke.py's net, smaller, without dropout (its random bits add seconds of
  # compilation on a CPU); data at 32x32.
  model=(
    'data.image_size=32',
    'model.base_width=2',
    'model.num_levels=2',
    'model.blocks_per_stage=1',
    'model.encoder_dropout=0.0',
    'model.decoder_dropout=0.0',
    'model.head_dropout=0.0',
    'train.batch_size=4',
    'eval.batch_size=16',
    'input.read_threads=1',
    'augment.augment_repeats=1',
  ),
  train=('train.progress_bar=False', 'train.num_epochs=2', 'train.log_every_steps=2'),
  batch_sizes=(2,),
  dtypes=('bfloat16', 'float32'),
  steps=3,
  warmup=1,
  input_workers=(0, 1),
  input_batches=3,
  bench_extra=('--matmul_size=256', '--bandwidth_mib=4'),
  torch_batch_sizes=(2,),
  torch_compile=False,  # torch.compile takes minutes on a CPU
  jax_bench_share=0.8,
  default_train_workers=0,
  min_train_s=8.0,
  eval_reserve_s=10.0,
  final_reserve_s=4.0,
  grace_s=3.0,
  check_timeout_s=60.0,
)


class Clock:
  """Seconds since the start and to the end of the budget."""

  def __init__(self, budget_s: float):
    self.start, self.budget_s = time.monotonic(), budget_s

  def elapsed(self) -> float:
    return time.monotonic() - self.start

  def left(self) -> float:
    return self.budget_s - self.elapsed()


# --- Subprocesses ----------------------------------------------------------------------------


def run_limited(
  cmd: list[str], log: pathlib.Path, limit_s: float, env: dict, grace_s: float
) -> dict:
  """Runs `cmd` (output to `log`) for at most `limit_s` seconds, then SIGTERM (a training run
  stops as on Ctrl-C: the checkpoint in flight completes) and after `grace_s` SIGKILL of its
  whole process group (grain workers, compile workers). Returns returncode, cut, seconds."""
  start = time.monotonic()
  log.parent.mkdir(parents=True, exist_ok=True)
  with open(log, 'ab') as f:
    f.write(('$ ' + ' '.join(cmd) + '\n').encode())
    f.flush()
    proc = subprocess.Popen(
      cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True
    )
    cut = False
    try:
      rc = proc.wait(timeout=max(limit_s, 0.1))
    except subprocess.TimeoutExpired:
      cut = True
      proc.send_signal(signal.SIGTERM)
      try:
        rc = proc.wait(timeout=grace_s)
      except subprocess.TimeoutExpired:
        rc = None
    _kill_group(proc.pid)  # what the leader left behind, or the leader itself
    if rc is None:
      rc = proc.wait()
  return {'returncode': rc, 'cut': cut, 'seconds': round(time.monotonic() - start, 2)}


def _kill_group(pgid: int) -> None:
  try:
    os.killpg(pgid, signal.SIGKILL)
  except (ProcessLookupError, PermissionError):
    pass


def subprocess_env(site_dir: pathlib.Path | None, scratch: pathlib.Path, dry_run: bool) -> dict:
  """The environment of every subprocess: the installed wheels and this checkout importable,
  unbuffered output, one compilation cache for all runs (seeds share their programs)."""
  env = dict(os.environ)
  paths = ([str(site_dir)] if site_dir else []) + [str(ROOT)]
  if env.get('PYTHONPATH'):
    paths.append(env['PYTHONPATH'])
  env['PYTHONPATH'] = os.pathsep.join(paths)
  env['PYTHONUNBUFFERED'] = '1'
  env.setdefault('JAX_COMPILATION_CACHE_DIR', str(scratch / 'jax_cache'))
  if dry_run:
    env['JAX_PLATFORMS'] = 'cpu'  # a dry run stays one on a machine with a GPU
  return env


def copy_log(log: pathlib.Path, dest: pathlib.Path) -> None:
  """The last LOG_TAIL_BYTES of a log (where errors are)."""
  if not log.exists():
    return
  data = log.read_bytes()
  if len(data) > LOG_TAIL_BYTES:
    data = b'[... %d bytes left out ...]\n' % (len(data) - LOG_TAIL_BYTES) + data[-LOG_TAIL_BYTES:]
  dest.parent.mkdir(parents=True, exist_ok=True)
  _write_bytes(dest, data)


def _write_bytes(path: pathlib.Path, data: bytes) -> None:
  """Written whole or not at all (temporary file, then rename)."""
  tmp = path.with_name(f'.{path.name}.tmp')
  tmp.write_bytes(data)
  os.replace(tmp, path)


def _write_json(path: pathlib.Path, obj) -> None:
  _write_bytes(path, (json.dumps(obj, indent=1) + '\n').encode())


def _read_json(path: pathlib.Path):
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return None


# --- 1. Setup ----------------------------------------------------------------------------------


def missing_modules() -> list[str]:
  importlib.invalidate_caches()
  return [m for m in NEEDED_MODULES if importlib.util.find_spec(m) is None]


def install_wheels(
  wheels: pathlib.Path, site_dir: pathlib.Path, log: pathlib.Path, clock: Clock, s: Settings
) -> dict:
  """pip-installs the wheels offline into `site_dir` when a needed module is missing."""
  missing = missing_modules()
  result = {'missing_before': missing, 'installed': False, 'site_dir': None}
  if not missing:
    return result
  found = sorted(wheels.glob('*.whl'))
  if not found:
    result['error'] = (
      f'{", ".join(missing)} not importable and no wheels in {wheels}: run '
      "'pip download -d .whl grain tensorflow-datasets ml-collections' with "
      'the same Python on a machine with network, and bring .whl/ along'
    )
    return result
  cmd = [
    sys.executable,
    '-m',
    'pip',
    'install',
    '-q',
    '--no-index',
    '--no-deps',
    '--no-compile',
    '--no-cache-dir',
    '--upgrade',
    '--target',
    str(site_dir),
    *map(str, found),
  ]
  done = run_limited(
    cmd, log, min(240.0, clock.left() - s.final_reserve_s), dict(os.environ), s.grace_s
  )
  result.update(pip=done, wheels=len(found))
  if done['returncode'] == 0:
    sys.path.insert(0, str(site_dir))
    result.update(installed=True, site_dir=str(site_dir))
  result['missing_after'] = missing_modules()
  if result['missing_after']:
    result['error'] = f'still not importable: {", ".join(result["missing_after"])} (see {log.name})'
  return result


_CHECK = (
  'import json, jax; d = jax.devices()[0]; print("DEVICE " + json.dumps({'
  '"platform": d.platform, "device_kind": d.device_kind, '
  '"device_count": jax.device_count(), "jax": jax.__version__}))'
)


def check_device(env: dict, log: pathlib.Path, clock: Clock, s: Settings) -> dict:
  """What JAX sees (in a subprocess, as the runs will), and nvidia-smi's name for it."""
  done = run_limited(
    [sys.executable, '-c', _CHECK],
    log,
    min(s.check_timeout_s, clock.left() - s.final_reserve_s),
    env,
    s.grace_s,
  )
  device = {'check': done}
  for line in log.read_text(errors='replace').splitlines():
    if line.startswith('DEVICE '):
      device.update(json.loads(line[len('DEVICE ') :]))
  if shutil.which('nvidia-smi'):  # its name says SXM or PCIe where JAX's may not
    try:
      smi = subprocess.run(
        ['nvidia-smi', '--query-gpu=name,memory.total,driver_version', '--format=csv,noheader'],
        capture_output=True,
        text=True,
        timeout=30,
      )
      device['nvidia_smi'] = smi.stdout.strip() or smi.stderr.strip()
    except (OSError, subprocess.SubprocessError) as e:
      device['nvidia_smi'] = f'failed: {e}'
  return device


def find_data(
  data_dir: str, dry_run: bool, scratch: pathlib.Path
) -> tuple[pathlib.Path | None, str]:
  """The raw WBC folder and where it came from (None and why where there is none); --dry_run
  without one generates one."""
  candidates = (
    [pathlib.Path(data_dir)]
    if data_dir
    else ([pathlib.Path(os.environ['WCSEG_DATA_DIR'])] if os.environ.get('WCSEG_DATA_DIR') else [])
    + list(DATA_CANDIDATES)
  )
  for path in candidates:
    if (path / 'Dataset 1').is_dir():
      return path.resolve(), 'given' if data_dir else 'found'
  if data_dir or not dry_run:
    return None, (
      f'no WBC Image Dataset (a folder holding "Dataset 1/") at '
      f'{", ".join(map(str, candidates))}; give --data_dir, or copy the data into '
      'shared/datasets/segmentation_WBC inside the checkout'
    )
  sys.path.insert(0, str(ROOT / 'tests'))
  fixtures = importlib.import_module('fixtures')
  fixtures.make_wbc_raw(scratch / 'generated_data')
  return scratch / 'generated_data', 'generated (tests/fixtures.py)'


# --- 2. Benchmarks -----------------------------------------------------------------------------


def _config_args(pairs) -> list[str]:
  return [f'--config.{p}' for p in pairs]


def benchmark_commands(
  s: Settings, data: pathlib.Path, tfds: pathlib.Path, torch_dtypes
) -> list[tuple]:
  """(name, argv, share of the benchmark time): the JAX benchmark, then one PyTorch
  comparison per dtype (PyTorch and JAX at the same batch, in one process)."""
  common = [
    sys.executable,
    str(ROOT / 'tools' / 'benchmark.py'),
    f'--config={ROOT / s.bench_config}',
    f'--config.data.raw_dir={data}',
    f'--config.data.tfds_dir={tfds}',
    *_config_args(s.model),
    f'--steps={s.steps}',
    f'--warmup={s.warmup}',
    *s.bench_extra,
  ]
  jax_bench = [
    *common,
    f'--batch_sizes={",".join(map(str, s.batch_sizes))}',
    f'--dtypes={",".join(s.dtypes)}',
    '--modes=train,infer,input',
    f'--input_workers={",".join(map(str, s.input_workers))}',
    f'--input_batches={s.input_batches}',
  ]
  commands = [('benchmark', jax_bench, s.jax_bench_share)]
  if importlib.util.find_spec('torch') is None:  # benchmark.py would only repeat JAX rows
    return commands
  # The train step only (one torch.compile, of forward and backward, takes tens of seconds),
  # PyTorch's first, then ours at the same batch in the same process.
  torch_share = (1.0 - s.jax_bench_share) / max(len(torch_dtypes), 1)
  for dtype in torch_dtypes:
    commands.append(
      (
        f'benchmark_torch_{dtype}',
        [
          *common,
          f'--batch_sizes={",".join(map(str, s.torch_batch_sizes))}',
          f'--dtypes={dtype}',
          '--modes=torch_train,train',
          '--torch_compile' if s.torch_compile else '--notorch_compile',
        ],
        torch_share,
      )
    )
  return commands


def run_benchmarks(s: Settings, data, tfds, out, scratch, env, clock, state) -> None:
  """Each benchmark gets its share of the benchmark time left (what an earlier one did not
  use passes on), within `--bench_share` of the budget."""
  bench_end = min(
    clock.elapsed() + FLAGS.bench_share * FLAGS.budget_s,
    clock.budget_s - s.final_reserve_s - s.grace_s,
  )
  commands = benchmark_commands(s, data, tfds, FLAGS.torch_dtypes)
  if importlib.util.find_spec('torch') is None:
    state['cut'].append('PyTorch comparison: skipped, torch is not installed')
  for i, (name, argv, share) in enumerate(commands):
    shares_left = sum(c[2] for c in commands[i:])
    limit = (bench_end - clock.elapsed()) * share / shares_left
    entry = {'name': name, 'file': f'{name}.json', 'limit_s': round(limit, 1)}
    state['benchmark'].append(entry)
    if limit < 1.0:
      entry['status'] = 'skipped'
      state['cut'].append(f'{name}: skipped, no benchmark time left')
      continue
    # benchmark.py starts no measurement past its own limit; this process stops it at ours.
    json_path = out / f'{name}.json'
    done = run_limited(
      [*argv, f'--time_limit_s={0.75 * limit:.1f}', f'--output={json_path}'],
      scratch / 'logs' / f'{name}.log',
      limit,
      env,
      s.grace_s,
    )
    copy_log(scratch / 'logs' / f'{name}.log', out / 'logs' / f'{name}.log')
    report = _read_json(json_path)
    entry.update(done)
    entry['status'] = 'cut' if done['cut'] else 'failed' if done['returncode'] else 'finished'
    rows = (report or {}).get('results', [])
    skipped = sum('skipped' in r for r in rows)
    if done['cut'] or skipped:
      entry['status'] = 'cut'
      what = f'stopped at its limit ({limit:.0f} s)' if done['cut'] else 'reached its time limit'
      state['cut'].append(
        f'{name}: {what}; {sum("images_per_s" in r for r in rows)} rows '
        f'measured, {skipped} skipped, {sum("error" in r for r in rows)} '
        'failed' + (', the rest not reached' if done['cut'] else '')
      )
    elif done['returncode']:
      state['cut'].append(f'{name}: failed (exit {done["returncode"]}), see logs/{name}.log')
    if name == 'benchmark' and report:
      rates = {
        r['num_workers']: r['images_per_s']
        for r in report['results']
        if r['mode'] == 'input' and 'images_per_s' in r
      }
      state['train_workers'] = max(rates, key=rates.get) if rates else None
    write_outputs(out, state)


# --- 3. Training and evaluation -----------------------------------------------------------------


def parse_run(name: str) -> tuple[str, int]:
  """'wcseg_s1' -> ('wcseg', 1); the config must exist."""
  config, sep, seed = name.rpartition('_s')
  if not sep or not seed.isdigit() or not (ROOT / 'configs' / f'{config}.py').exists():
    raise app.UsageError(f'--runs: {name!r} is not <config>_s<seed> with configs/<config>.py')
  return config, int(seed)


def _last_checkpoint(workdir: pathlib.Path) -> int | None:
  steps = [int(p.name) for p in (workdir / 'checkpoints').glob('*') if p.name.isdigit()]
  return max(steps) if steps else None


def _records(workdir: pathlib.Path) -> list[dict]:
  """metrics.jsonl's records (a last line cut by a kill left out)."""
  path, records = workdir / 'metrics.jsonl', []
  for line in path.read_text().splitlines() if path.exists() else []:
    try:
      records.append(json.loads(line))
    except ValueError:
      pass
  return records


def _last_record(workdir: pathlib.Path, key: str):
  values = [r[key] for r in _records(workdir) if key in r]
  return values[-1] if values else None


def train_and_evaluate(name, s: Settings, data, tfds, out, scratch, env, clock, state) -> dict:
  """One run: train within what is left (less the evaluation's reserve), then evaluate the
  last checkpoint on every test split; copies its small files to out/runs/<name>/."""
  config, seed = parse_run(name)
  workdir = scratch / 'runs' / name
  workers = state.get('train_workers')
  workers = s.default_train_workers if workers is None else workers
  args = [
    f'--config={ROOT / "configs" / f"{config}.py"}',
    f'--workdir={workdir}',
    f'--config.data.raw_dir={data}',
    f'--config.data.tfds_dir={tfds}',
    f'--config.seed={seed}',
    f'--config.input.shuffle_seed={seed}',
    f'--config.input.num_workers={workers}',
    *_config_args(s.model),
    *_config_args(s.train),
    *_config_args(FLAGS.override),
  ]
  run = {
    'name': name,
    'config': config,
    'seed': seed,
    'input_workers': workers,
    'workdir': str(workdir),
    'args': args,
  }
  logs = scratch / 'logs'
  limit = clock.left() - s.eval_reserve_s - s.final_reserve_s - 2 * s.grace_s
  # Evaluated below, within its own time limit: not by the training command as well.
  run['train'] = train = run_limited(
    [sys.executable, '-m', 'wcsegnet_jax.main', *args, '--nofinal_report'],
    logs / f'{name}.train.log',
    limit,
    env,
    s.grace_s,
  )
  train['limit_s'] = round(limit, 1)
  train['status'] = 'cut' if train['cut'] else 'failed' if train['returncode'] else 'finished'
  run['last_checkpoint'] = _last_checkpoint(workdir)
  run['epochs_done'] = _last_record(workdir, 'epoch')
  if train['status'] == 'cut':
    state['cut'].append(
      f'{name}: training stopped at its limit ({limit:.0f} s), epoch '
      f'{run["epochs_done"]}; evaluated at checkpoint step '
      f'{run["last_checkpoint"]}'
    )
  elif train['status'] == 'failed':
    state['cut'].append(
      f'{name}: training failed (exit {train["returncode"]}), see runs/{name}/train.log'
    )
  if run['last_checkpoint'] is not None:
    limit = clock.left() - s.final_reserve_s - s.grace_s
    run['eval'] = ev = run_limited(
      [sys.executable, '-m', 'wcsegnet_jax.main', *args, '--mode=evaluate'],
      logs / f'{name}.eval.log',
      limit,
      env,
      s.grace_s,
    )
    ev['status'] = 'cut' if ev['cut'] else 'failed' if ev['returncode'] else 'finished'
    if ev['status'] != 'finished':
      state['cut'].append(f'{name}: evaluation {ev["status"]}, see runs/{name}/eval.log')
  else:
    run['eval'] = {'status': 'skipped'}
    state['cut'].append(f'{name}: no checkpoint to evaluate')
  collect_run(name, workdir, out / 'runs' / name, logs)
  run['metrics'] = {
    p.parent.name: (_read_json(p) or {}).get('paper', {})
    for p in sorted((out / 'runs' / name / 'eval').glob('*/metrics.json'))
  }
  return run


def collect_run(name: str, workdir: pathlib.Path, dest: pathlib.Path, logs: pathlib.Path) -> None:
  """The small files of a workdir, never its checkpoints."""
  dest.mkdir(parents=True, exist_ok=True)
  for f in RUN_FILES:
    if (workdir / f).exists():
      shutil.copyfile(workdir / f, dest / f)
  for eval_dir in sorted((workdir / 'eval').glob('*')):
    for f in EVAL_FILES:
      if (eval_dir / f).exists():
        (dest / 'eval' / eval_dir.name).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(eval_dir / f, dest / 'eval' / eval_dir.name / f)
  for kind in ('train', 'eval'):
    copy_log(logs / f'{name}.{kind}.log', dest / f'{kind}.log')


def plot_curves(out: pathlib.Path, runs: list[dict], env, scratch, clock, s: Settings) -> dict:
  with_tests = [
    r
    for r in runs
    if any(k.startswith('test/') for rec in _records(pathlib.Path(r['workdir'])) for k in rec)
  ]
  if not with_tests:
    return {'status': 'skipped', 'why': 'no run was evaluated during training'}
  cmd = [
    sys.executable,
    str(ROOT / 'tools' / 'plot_curves.py'),
    f'--output={out / "curves.png"}',
    *[f'{r["name"]}={r["workdir"]}' for r in with_tests],
  ]
  done = run_limited(cmd, scratch / 'logs' / 'curves.log', max(1.0, clock.left() - 2.0), env, 1.0)
  copy_log(scratch / 'logs' / 'curves.log', out / 'logs' / 'curves.log')
  return {**done, 'status': 'finished' if (out / 'curves.png').exists() else 'failed'}


# --- 4. Report ----------------------------------------------------------------------------------


def _reports():
  """wcsegnet_jax.reports (the project's tables and Table 1), or the reason it is missing."""
  try:
    return importlib.import_module('wcsegnet_jax.evaluation.reports'), None
  except Exception as e:  # pylint: disable=broad-except   # a failed setup still reports
    return None, f'{type(e).__name__}: {e}'


def _n(value, digits=None) -> str:
  if value is None:
    return 'n/a'
  if isinstance(value, int):
    return str(value)
  v = float(value)
  if digits is None:
    digits = 0 if abs(v) >= 1000 else 1 if abs(v) >= 100 else 2 if abs(v) >= 1 else 3
  return f'{v:.{digits}f}'


def _table(header, rows) -> str:
  lines = [header, ['---'] * len(header)] + [[str(c) for c in r] for r in rows]
  return '\n'.join('| ' + ' | '.join(cells) + ' |' for cells in lines)


def benchmark_section(out: pathlib.Path, state: dict) -> list[str]:
  lines = ['## Benchmark', '']
  if not state['benchmark']:
    return lines + ['Not run (--skip_benchmark, or setup failed).', '']
  for entry in state['benchmark']:
    report = _read_json(out / entry['file'])
    lines.append(f'### {entry["name"]} ({entry.get("status")}, {_n(entry.get("seconds"))} s)')
    lines.append('')
    if not report:
      lines += ['No results (see logs/).', '']
      continue
    env, ceilings = report['environment'], report['ceilings']
    ds = ceilings.get('datasheet')
    mm, bw = ceilings.get('matmul', {}), ceilings.get('memory_bandwidth', {})
    lines.append(
      f'Device: {env["device_kind"]} ({env["platform"]}), jax {env["jax"]}, '
      f'{env["date"]}. Matmul peak {_n(mm.get("flops_per_s", 0) / 1e12)} TFLOP/s '
      f'({mm.get("size")} {mm.get("dtype")}); bandwidth '
      f'{_n(bw.get("bytes_per_s", 0) / 1e9)} GB/s; data-sheet dense bf16 peak: '
      + (
        f'{ds["name"]} {_n(ds["bf16_dense_flops_per_s"] / 1e12)} TFLOP/s.'
        if ds
        else 'none for this device kind.'
      )
    )
    lines.append('')
    rows = []
    for r in report['results']:
      if r['mode'] == 'input':
        continue
      if 'images_per_s' not in r:
        rows.append(
          [
            r['mode'],
            r['batch_size'],
            r['dtype'],
            r.get('error', 'skipped: ' + str(r.get('skipped')))[:80],
            '',
            '',
            '',
            '',
            '',
          ]
        )
        continue
      t = r['timing']
      compile_s = t['lower_s'] + t['compile_s'] if 'lower_s' in t else t.get('first_step_s')
      peak = r.get('peak_bytes_in_use')
      rows.append(
        [
          r['mode'],
          r['batch_size'],
          r['dtype'],
          _n(r['images_per_s']),
          _n(r['ms_per_step']),
          _n(compile_s),
          _n(r.get('mfu'), 3),
          _n(r.get('mfu_datasheet'), 3),
          _n(peak / 2**30, 2) if peak else 'n/a',
        ]
      )
    if rows:
      lines += [
        _table(
          [
            'mode',
            'batch',
            'dtype',
            'images/s',
            'ms/step',
            'compile s',
            'MFU (measured peak)',
            'MFU (data sheet)',
            'peak GiB',
          ],
          rows,
        ),
        '',
      ]
    inputs = [r for r in report['results'] if r['mode'] == 'input']
    if inputs:
      lines += [
        _table(
          ['input workers', 'batch', 'images/s'],
          [
            [
              r['num_workers'],
              r['batch_size'],
              _n(r.get('images_per_s')) if 'images_per_s' in r else r.get('error', 'skipped')[:80],
            ]
            for r in inputs
          ],
        ),
        '',
      ]
    for ratio in report.get('ratios', []):
      lines.append(
        f'- JAX / PyTorch {ratio["mode"]} batch {ratio["batch_size"]} '
        f'{ratio["dtype"]}: {_n(ratio["jax_over_torch"], 2)}x '
        f'({_n(ratio["jax_images_per_s"])} vs {_n(ratio["torch_images_per_s"])} '
        'images/s)'
      )
    lines += [f'- note: {n}' for n in report.get('notes', [])]
    lines += [f'- complete: {report.get("complete")}', '']
  return lines


def table1_section(out: pathlib.Path, state: dict) -> list[str]:
  lines = ['## Table 1: test splits against the paper', '']
  if not state['runs']:
    return lines + ['No training run.', '']
  reports, why = _reports()
  keys = ('accuracy', 'precision', 'recall', 'dice', 'miou')
  datasets = sorted({d for r in state['runs'] for d in r.get('metrics', {})})
  for dataset in datasets:
    rows = []
    source = dataset.removesuffix('-tta')
    for method, values in reports.PAPER_TABLE1.get(source, ()) if reports else ():
      rows.append([f'paper: {method}'] + [_n(values.get(k), 4) for k in keys] + ['', ''])
    for r in state['runs']:
      m = r.get('metrics', {}).get(dataset)
      if m is None:
        continue
      status = r['train']['status']
      rows.append(
        [f'{r["name"]} ({PAPER_METHOD.get(r["config"], r["config"])})']
        + [_n(m.get(k), 4) for k in keys]
        + [_n(r.get('epochs_done'), 1), status]
      )
    lines += [
      f'### {dataset}',
      '',
      _table(
        ['method', 'accuracy', 'precision', 'recall', 'Dice', 'mIoU', 'epochs', 'training'], rows
      ),
      '',
    ]
  if not reports:
    lines += [f'(The paper rows are missing: wcsegnet_jax.reports did not import: {why}.)', '']
  lines.append(
    'Nucleus against background, pooled over the test pixels, last checkpoint '
    '(runs/<name>/eval/<dataset>/report.md has the per-class and per-cell tables).'
  )
  lines.append('')
  rows = [
    [
      r['name'],
      r['train']['status'],
      _n(r['train'].get('seconds')),
      _n(r.get('epochs_done'), 1),
      r.get('last_checkpoint'),
      r['eval'].get('status'),
      r['input_workers'],
    ]
    for r in state['runs']
  ]
  lines += [
    _table(
      ['run', 'training', 'train s', 'epochs', 'checkpoint step', 'evaluation', 'input workers'],
      rows,
    ),
    '',
  ]
  return lines


def write_report(out: pathlib.Path, state: dict) -> str:
  device = state.get('device', {})
  lines = [
    '# GPU run' + (' (dry run, CPU)' if state['dry_run'] else ''),
    '',
    f'Started {state["started"]}, budget {state["budget_s"]:.0f} s, '
    f'elapsed {state["elapsed_s"]:.0f} s. Command: `{state["command"]}`',
    '',
    f'Device: {device.get("device_kind", "unknown")} ({device.get("platform", "?")}, '
    f'{device.get("device_count", "?")} device(s)), jax {device.get("jax", "?")}'
    + (f'; nvidia-smi: {device["nvidia_smi"]}' if device.get('nvidia_smi') else '')
    + f'. Data: {state.get("data", "?")}. Scratch (workdirs, checkpoints): '
    f'{state["scratch"]}.',
    '',
  ]
  if state.get('error'):
    lines += [f'**Stopped: {state["error"]}**', '']
  lines += benchmark_section(out, state)
  lines += table1_section(out, state)
  if (out / 'curves.png').exists():
    lines += ['## Training curves', '', '![curves](curves.png)', '']
  lines += ['## Cut or skipped', '']
  lines += [f'- {c}' for c in state['cut']] or ['Nothing: every step finished.']
  lines.append('')
  text = '\n'.join(lines)
  _write_bytes(out / 'report.md', text.encode())
  return text


def write_outputs(out: pathlib.Path, state: dict) -> str:
  """summary.json, report.md and the archive, as they stand (rewritten after every step)."""
  state['elapsed_s'] = round(state['clock'].elapsed(), 1)
  _write_json(out / 'summary.json', {k: v for k, v in state.items() if k != 'clock'})
  text = write_report(out, state)
  if FLAGS.archive:
    archive = pathlib.Path(FLAGS.archive)
    archive.parent.mkdir(parents=True, exist_ok=True)
    tmp = archive.with_name(f'.{archive.name}.tmp')
    with tarfile.open(tmp, 'w:gz') as tar:
      tar.add(out, arcname=out.name)
    os.replace(tmp, archive)
  return text


def checkpoint_files(out: pathlib.Path) -> list[str]:
  """Anything under `out` that looks like a checkpoint (there should be none)."""
  return sorted(
    str(p.relative_to(out))
    for p in out.rglob('*')
    if p.name in ('checkpoints', '_CHECKPOINT_METADATA', 'commit_success.txt')
    or p.suffix in ('.ocdbt', '.msgpack')
  )


# --- Main ---------------------------------------------------------------------------------------


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  clock = Clock(FLAGS.budget_s)
  s = DRY if FLAGS.dry_run else GPU
  out = pathlib.Path(FLAGS.out).resolve()
  if out.exists() and any(out.iterdir()):
    raise app.UsageError(f'--out={out} is not empty: give a new folder')
  runs = list(FLAGS.runs)
  for name in runs:  # every name checked before anything runs
    parse_run(name)
  scratch = (
    pathlib.Path(FLAGS.scratch)
    if FLAGS.scratch
    else pathlib.Path(tempfile.mkdtemp(prefix='gpu_run_'))
  ).resolve()
  if scratch == out or out in scratch.parents:
    raise app.UsageError(f'--scratch={scratch} is inside --out: checkpoints must stay out')
  out.mkdir(parents=True, exist_ok=True)
  scratch.mkdir(parents=True, exist_ok=True)
  state = {
    'command': ' '.join([sys.executable, *sys.argv]),
    'dry_run': FLAGS.dry_run,
    'started': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
    'budget_s': FLAGS.budget_s,
    'elapsed_s': 0.0,
    'scratch': str(scratch),
    'settings': dataclasses.asdict(s),
    'overrides': FLAGS.override,
    'benchmark': [],
    'runs': [],
    'cut': [],
    'clock': clock,
  }
  try:
    run_all(s, runs, out, scratch, clock, state)
  finally:
    state['checkpoint_files_in_out'] = checkpoint_files(out)
    text = write_outputs(out, state)
    print(text)
  if state.get('error'):
    sys.exit(1)


def run_all(s: Settings, runs, out, scratch, clock, state) -> None:
  logs = scratch / 'logs'
  state['setup'] = setup = install_wheels(
    pathlib.Path(FLAGS.wheels), pathlib.Path(FLAGS.site_dir), logs / 'setup.log', clock, s
  )
  if setup.get('error'):
    state['error'] = setup['error']
    return
  site = pathlib.Path(setup['site_dir']) if setup['site_dir'] else None
  env = subprocess_env(site, scratch, FLAGS.dry_run)
  state['device'] = device = check_device(env, logs / 'setup.log', clock, s)
  copy_log(logs / 'setup.log', out / 'logs' / 'setup.log')
  wanted = 'cpu' if FLAGS.dry_run else 'gpu'
  if device.get('platform') != wanted:
    state['error'] = (
      f'JAX sees {device.get("platform", "no device")}, not a {wanted} (see logs/setup.log)'
    )
    return
  data, origin = find_data(FLAGS.data_dir, FLAGS.dry_run, scratch)
  if data is None:
    state['error'] = origin
    return
  state['data'] = f'{data} ({origin})'
  tfds = scratch / 'tfds'
  write_outputs(out, state)
  if not FLAGS.skip_benchmark:
    run_benchmarks(s, data, tfds, out, scratch, env, clock, state)
  needed = s.min_train_s + s.eval_reserve_s + s.final_reserve_s + 2 * s.grace_s
  for i, name in enumerate(runs):
    if clock.left() < needed:
      state['cut'].append(
        f'not started for lack of time ({clock.left():.0f} s left, a run '
        f'needs {needed:.0f}): {", ".join(runs[i:])}'
      )
      break
    state['runs'].append(train_and_evaluate(name, s, data, tfds, out, scratch, env, clock, state))
    write_outputs(out, state)
  state['curves'] = plot_curves(out, state['runs'], env, scratch, clock, s)


if __name__ == '__main__':
  app.run(main)
