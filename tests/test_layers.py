"""The package's layers, read from its imports (AST): which layer may import which, and a predict
command free of the training stack.

  commands     main.py (train, evaluate), predict.py
  training     train loop, checkpoints for resume, metric logs, workdirs, fine-tuning data
  evaluation   evaluate, reports, curves, tables over runs
  inference    the segmenter (crops, fields in tiles), scale estimate, predict's pieces; and
               export/ (ONNX, bioimage.io), predict's other backend, in the same layer
  cells        cells in a predicted map, their measurements and typing, overlays, scoring
  model        the network, losses, metrics, decoding, probabilities, trained weights
  data         image files, records, label maps, colour, augmentation, TFDS builds, pipelines
  core         errors, files, logs, classes, configs (loading, key roles, checks, flags)
  dev          benchmarks, mosaics, the local cluster: for developers, imported by tools/ only

A module may import its own layer and those below it (dev: any layer; none imports dev). Run
`python tests/test_layers.py` to print the picture and each layer's modules.
"""

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / 'wcsegnet_jax'
# Lowest first: a layer may import the layers before it.
LAYERS = ('core', 'data', 'model', 'cells', 'inference', 'evaluation', 'training', 'commands')
COMMANDS = {'main', 'predict'}
# Subpackages named for what they make rather than by layer, and the layer they sit in.
IN_LAYER = {'export': 'inference'}
DEV = 'dev'
# What `import wcsegnet_jax.predict` must not load: the training stack and plotting.
NOT_FOR_PREDICT = (
  'tensorflow_datasets',
  'grain',
  'optax',
  'matplotlib',
  'tensorboardX',
  'orbax',
  'wcsegnet_jax.training',
  'wcsegnet_jax.evaluation',
  'wcsegnet_jax.data.tfds_builder',
  'wcsegnet_jax.data.input_pipeline',
  'wcsegnet_jax.dev',
)


def layer_of(module: str) -> str:
  """'wcsegnet_jax.model.models' -> 'model'; the command modules -> 'commands'."""
  parts = module.split('.')
  if len(parts) == 1:
    return 'package'
  if len(parts) == 2:
    return 'commands' if parts[1] in COMMANDS else 'package'
  return IN_LAYER.get(parts[1], parts[1])


def modules() -> dict[str, pathlib.Path]:
  return {
    '.'.join(p.relative_to(ROOT).with_suffix('').parts): p
    for p in sorted(PACKAGE.rglob('*.py'))
    if p.name != '__init__.py'
  }


def imports(path: pathlib.Path, top_level_only: bool = False) -> set[str]:
  """The package modules `path` imports (`from wcsegnet_jax.x import y` names y's module when y is
  one); with `top_level_only`, only those imported when the module is (not inside functions)."""
  tree = ast.parse(path.read_text())
  nodes = tree.body if top_level_only else ast.walk(tree)
  found, known = set(), modules()
  for node in nodes:
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names if a.name.startswith('wcsegnet_jax')}
    elif isinstance(node, ast.ImportFrom) and (node.module or '').startswith('wcsegnet_jax'):
      for a in node.names:
        name = f'{node.module}.{a.name}'
        found.add(
          name
          if name in known or (PACKAGE / name.split('.', 1)[1].replace('.', '/')).is_dir()
          else node.module
        )
  return found


def external_imports(path: pathlib.Path) -> set[str]:
  """The top-level packages (not ours) `path` imports when it is imported."""
  found = set()
  for node in ast.parse(path.read_text()).body:
    if isinstance(node, ast.Import):
      found |= {a.name.split('.')[0] for a in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      found.add(node.module.split('.')[0])
  return found - {'wcsegnet_jax'}


def violations() -> list[str]:
  """'a imports b' for each import of a higher layer (or of dev outside dev)."""
  found = []
  for module, path in modules().items():
    mine = layer_of(module)
    for imported in sorted(imports(path)):
      theirs = layer_of(imported)
      if mine == DEV:
        continue
      if theirs == DEV or (theirs in LAYERS and LAYERS.index(theirs) > LAYERS.index(mine)):
        found.append(f'{module} ({mine}) imports {imported} ({theirs})')
  return found


def loaded_by(module: str) -> tuple[set[str], set[str]]:
  """(our modules, external packages) that importing `module` loads, from the AST: its top-level
  imports, followed through ours."""
  known, ours, external, todo = modules(), set(), set(), [module]
  while todo:
    name = todo.pop()
    if name in ours or name not in known:
      continue
    ours.add(name)
    external |= external_imports(known[name])
    todo += imports(known[name], top_level_only=True)
  return ours, external


def picture() -> str:
  by_layer = {}
  for module in modules():
    parts = module.split('.')
    name = '/'.join(parts[1:]) if parts[1] in IN_LAYER else parts[-1]
    by_layer.setdefault(layer_of(module), []).append(name)
  lines = ['Layers, highest first (each imports only itself and those below):']
  for layer in reversed(LAYERS):
    lines.append(f'  {layer:<11} {", ".join(by_layer.get(layer, []))}')
  lines.append(f'  {DEV:<11} {", ".join(by_layer.get(DEV, []))}  (imported by tools/ only)')
  return '\n'.join(lines)


def missing_imports() -> list[str]:
  """'a: from p import n' for each import, anywhere in the package, tools or tests, of a name
  that a package of ours does not have as a module (a deferred import after a move, say)."""
  found, known = [], modules()
  for path in sorted(
    [
      *PACKAGE.rglob('*.py'),
      *(ROOT / 'tools').glob('*.py'),
      *(ROOT / 'tests').glob('*.py'),
      *(ROOT / 'configs').glob('*.py'),
    ]
  ):
    for node in ast.walk(ast.parse(path.read_text())):
      if not (isinstance(node, ast.ImportFrom) and (node.module or '').startswith('wcsegnet_jax')):
        continue
      package_dir = PACKAGE.parent / node.module.replace('.', '/')
      for a in node.names:
        name = f'{node.module}.{a.name}'
        if package_dir.is_dir() and name not in known and not (package_dir / a.name).is_dir():
          found.append(
            f'{path.relative_to(ROOT)}:{node.lineno}: from {node.module} import {a.name}'
          )
        elif not package_dir.is_dir() and node.module not in known:
          found.append(f'{path.relative_to(ROOT)}:{node.lineno}: from {node.module} import ...')
  return found


def test_every_import_of_ours_names_a_module_that_exists():
  found = missing_imports()
  assert not found, 'imports of modules that do not exist:\n  ' + '\n  '.join(found)


def test_every_module_is_in_a_layer():
  stray = [m for m in modules() if layer_of(m) not in LAYERS + (DEV,)]
  assert not stray, f'modules outside the layers {LAYERS + (DEV,)}: {stray}'


def test_no_layer_imports_a_higher_one():
  print(picture())
  found = violations()
  assert not found, 'imports against the layers:\n  ' + '\n  '.join(found) + '\n' + picture()


def test_predict_imports_no_training_stack_by_its_source():
  ours, external = loaded_by('wcsegnet_jax.predict')
  heavy = sorted(
    m
    for m in ours | external
    if any(m == bad or m.startswith(bad + '.') for bad in NOT_FOR_PREDICT)
  )
  assert not heavy, f'wcsegnet_jax.predict loads {heavy}'


def test_importing_predict_loads_no_training_stack():
  """The same, as Python loads it (what the libraries import too)."""
  code = (
    'import sys, wcsegnet_jax.predict; '
    f'print(sorted(m for m in sys.modules if m.split(".")[0] in {NOT_FOR_PREDICT!r} '
    f'or any(m.startswith(p) for p in {NOT_FOR_PREDICT!r} if "." in p)))'
  )
  out = subprocess.run(
    [sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, check=True
  ).stdout
  assert out.strip() == '[]'


def test_predict_help_exits_0():
  proc = subprocess.run(
    [sys.executable, '-m', 'wcsegnet_jax.predict', '--help'],
    cwd=ROOT,
    capture_output=True,
    text=True,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert '--output' in proc.stdout and '--field_scale' in proc.stdout


if __name__ == '__main__':
  print(picture() + '\n')
  print('\n'.join(violations()) or 'no import against the layers')
