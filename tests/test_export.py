"""Tests of the ONNX export (wcsegnet_jax/export/): parity with JAX, the bioimage.io package, the
ONNX Runtime backend of predict, and bad input as one line.

Parity is issue-grade: the largest probability difference <= 1e-4 and the argmax the same on
>= 99.99% of pixels, for a tiny model of configs/smoke.py (with the colour step) and for both
shipped models, on generated images. Skipped where the `export` extra is not installed.
"""

import os
import pathlib
import subprocess
import sys

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

for _module in ('jax2onnx', 'onnx', 'onnxruntime'):
  pytest.importorskip(
    _module, reason="the export extra is not installed (pip install -e '.[export]')"
  )

import fixtures  # pylint: disable=g-import-not-at-top
from configs import smoke  # pylint: disable=g-import-not-at-top
from wcsegnet_jax.core import classes
from wcsegnet_jax.core import errors
from wcsegnet_jax.data import color
from wcsegnet_jax.export import onnx_backend
from wcsegnet_jax.export import onnx_export
from wcsegnet_jax.inference import segmenter
from wcsegnet_jax.model import models
from wcsegnet_jax.model import probabilities
from wcsegnet_jax.model import shipped_model

ROOT = pathlib.Path(__file__).resolve().parent.parent
MAX_DIFF = 1e-4
MIN_ARGMAX_AGREEMENT = 0.9999


def assert_parity(reference: np.ndarray, got: np.ndarray) -> None:
  assert got.shape == reference.shape and got.dtype == np.float32
  assert np.abs(got - reference).max() <= MAX_DIFF
  assert (got.argmax(-1) == reference.argmax(-1)).mean() >= MIN_ARGMAX_AGREEMENT


def cell_crops(n: int, size: int, seed: int = 0) -> np.ndarray:
  """(n, size, size, 3) uint8 drawn cells (tests/fixtures.py), blurred a little as optics do."""
  rng = np.random.default_rng(seed)
  crops = [
    cv2.GaussianBlur(fixtures.cell_image(rng, fixtures.cell_mask(rng, size)), (3, 3), 0)
    for _ in range(n)
  ]
  return np.stack(crops)


def tiny_config(colour: str = 'reinhard'):
  config = smoke.get_config()
  config.data.color = colour
  config.model.block_norm = 'batch'  # BatchNorm in the blocks too, as the shipped models
  return config


def random_variables(config, seed: int = 0) -> dict:
  """A tiny model's initial variables, with BatchNorm statistics away from (0, 1)."""
  size = config.data.image_size
  variables = models.model_for(config).init(
    jax.random.key(seed), jnp.zeros((1, size, size, 3)), train=False
  )
  keys = iter(jax.random.split(jax.random.key(seed + 1), 1000))
  stats = jax.tree.map(
    lambda x: x + 0.1 * jax.random.uniform(next(keys), x.shape), variables['batch_stats']
  )
  return {'params': variables['params'], 'batch_stats': stats}


def jax_probabilities(config, variables, images, tta=False) -> np.ndarray:
  """What predict computes: the colour step (color.py) per image, then predict_probs."""
  standardized = np.stack([color.standardize(image, config.data) for image in images])
  model = models.model_for(config)
  return np.asarray(
    jax.jit(lambda x: probabilities.predict_probs(model, variables, x, config.data, tta))(
      standardized
    )
  )


def tiny_model(colour: str = 'reinhard'):
  """(config, variables, graph, info) of a tiny model with the colour step `colour`."""
  config = tiny_config(colour)
  variables = random_variables(config)
  info = onnx_export.describe(
    config, variables, 'a tiny test model', onnx_export.DEFAULT_OPSET, False, name='tiny'
  )
  graph = onnx_export.build_graph(config, variables, onnx_export.DEFAULT_OPSET, False, info)
  return config, variables, graph, info


@pytest.fixture(scope='module')
def tiny():
  return tiny_model()


def test_tiny_model_network_matches_jax_at_any_batch_size(tiny):
  config, variables, graph, info = tiny
  session = onnx_backend.session(onnx_backend.network_part(graph, info))
  for n in (1, 5):
    images = cell_crops(n, config.data.image_size, seed=n)
    standardized = np.stack([color.standardize(image, config.data) for image in images])
    got = session.run(None, {onnx_export.STANDARDIZED: standardized})[0]
    assert_parity(jax_probabilities(config, variables, images), got)


def test_whole_graph_takes_raw_rgb(tiny):
  """Fed raw crops, the graph's own colour step stands in for color.py's (OpenCV's CIELAB is an
  approximation of the definition the graph follows): a level apart on a few pixels."""
  config, variables, graph, info = tiny
  assert [i.name for i in graph.graph.input] == [onnx_export.INPUT]
  assert graph.graph.input[0].type.tensor_type.elem_type == 2  # uint8
  images = cell_crops(4, config.data.image_size, seed=7)
  assert_colour_part_matches_color_py(graph, config, images)
  whole = onnx_backend.session(graph).run(None, {onnx_export.INPUT: images})[0]
  reference = jax_probabilities(config, variables, images)
  assert (whole.argmax(-1) == reference.argmax(-1)).mean() > 0.99


def assert_colour_part_matches_color_py(graph, config, images):
  import onnx.utils

  colour_part = onnx_backend.session(
    onnx.utils.Extractor(graph).extract_model([onnx_export.INPUT], [onnx_export.STANDARDIZED])
  )
  ours = colour_part.run(None, {onnx_export.INPUT: images})[0].astype(int)
  opencv = np.stack([color.standardize(image, config.data) for image in images]).astype(int)
  assert np.abs(ours - opencv).max() <= 2
  assert (ours != opencv).mean() < 0.15


def test_two_point_colour_step_in_the_graph():
  """The two_point step's graph form (sorted L, the same anchor ranks) stands in for color.py's
  as reinhard's does, on crops with and without a nucleus."""
  config, _, graph, _ = tiny_model('two_point')
  images = cell_crops(3, config.data.image_size, seed=9)
  columns = (np.arange(images.shape[2]) // 4).astype(np.uint8)[:, None]
  blank = np.full_like(images[:1], 180) + columns  # a grey ramp: no nucleus, nothing stretched
  assert_colour_part_matches_color_py(graph, config, np.concatenate([images, blank]))


def test_flips_in_the_graph_match_predict_probs_tta(tiny):
  config, variables, _, _ = tiny
  config = tiny_config('none')
  graph = onnx_export.build_graph(config, variables, onnx_export.DEFAULT_OPSET, tta=True)
  images = cell_crops(3, config.data.image_size, seed=3)
  got = onnx_backend.session(graph).run(None, {onnx_export.INPUT: images})[0]
  assert_parity(jax_probabilities(config, variables, images, tta=True), got)


@pytest.mark.parametrize('opset', [onnx_export.OPSETS[0], onnx_export.OPSETS[-1]])
def test_opsets(tiny, opset):
  config, variables, _, _ = tiny
  graph = onnx_export.build_graph(config, variables, opset)
  assert {o.domain: o.version for o in graph.opset_import}[''] == opset


def test_backend_matches_segmenter_on_crops_and_fields(tiny):
  """The whole predict path (resizes, tiles, the flip average) by ONNX Runtime and by JAX."""
  config, variables, graph, info = tiny
  for tta in (False, True):
    jax_path = segmenter.Segmenter(config, variables, tta, batch_size=4)
    onnx_path = onnx_backend.OnnxSegmenter(config, graph, info, tta, batch_size=4)
    rng = np.random.default_rng(0)
    crops = [
      cv2.resize(image, (w, h))
      for image, (h, w) in zip(cell_crops(3, 100), [(64, 64), (100, 100), (50, 80)])
    ]
    for a, b in zip(jax_path.crops(crops), onnx_path.crops(crops)):
      assert_parity(a, b)
    field = cv2.GaussianBlur(rng.integers(0, 256, (150, 170, 3), np.uint8), (9, 9), 0)
    assert_parity(jax_path.field(field, 1.0), onnx_path.field(field, 1.0))
    assert onnx_path.without_tta().tta is False


@pytest.fixture(scope='module', params=shipped_model.MODEL_NAMES)
def shipped(request):
  config, variables, _ = shipped_model.load(shipped_model.model_dir(request.param))
  return (
    config,
    variables,
    onnx_backend.from_model(
      config, variables, request.param, tta=bool(config.eval.tta), batch_size=8
    ),
  )


def test_shipped_models_onnx_backend_matches_jax(shipped):
  """Both shipped models (the CPU recipe's network), with their flip average, as predict runs
  them: crops of three sizes and a field in tiles."""
  config, variables, onnx_path = shipped
  jax_path = segmenter.Segmenter(config, variables, bool(config.eval.tta), batch_size=8)
  crops = list(cell_crops(5, 120, seed=11)) + [cv2.resize(cell_crops(1, 300)[0], (300, 300))]
  for a, b in zip(jax_path.crops(crops), onnx_path.crops(crops)):
    assert_parity(a, b)
  field = np.concatenate(
    [np.concatenate(list(cell_crops(3, 120, seed=s)), 1) for s in (1, 2)], 0
  )  # 240 x 360: six cells
  assert_parity(jax_path.field(field, 1.0), onnx_path.field(field, 1.0))


def test_another_models_graph_is_refused_naming_both_class_tables(tiny, tmp_path):
  config, variables, graph, info = tiny
  path = tmp_path / 'model.onnx'
  path.write_bytes(graph.SerializeToString())
  other = shipped_model.load_config(shipped_model.model_dir('differential'))
  with pytest.raises(onnx_export.ExportError) as e:
    onnx_backend.from_file(path, other, None, 'the differential model', tta=False)
  message = str(e.value)
  assert str(path) in message
  assert classes.table_of(config.data).describe() in message
  assert classes.table_of(other.data).describe() in message
  other = random_variables(config, seed=5)
  with pytest.raises(onnx_export.ExportError, match='other weights'):
    onnx_backend.from_file(path, config, other, 'another tiny model', tta=False)
  onnx_backend.from_file(path, config, variables, 'the tiny model', tta=False)  # its own


def test_not_an_export_is_refused(tmp_path):
  junk = tmp_path / 'junk.onnx'
  junk.write_bytes(b'not a protobuf at all' * 10)
  with pytest.raises(onnx_export.ExportError, match='junk.onnx'):
    onnx_backend.read_graph(junk)
  with pytest.raises(onnx_export.ExportError, match='no such ONNX file'):
    onnx_backend.read_graph(tmp_path / 'missing.onnx')
  import onnx

  plain = tmp_path / 'plain.onnx'
  onnx.save(onnx.helper.make_model(onnx.helper.make_graph([], 'g', [], [])), str(plain))
  with pytest.raises(onnx_export.ExportError, match='tools/export_model.py'):
    onnx_backend.read_graph(plain)


def test_flip_graph_refused_by_the_backend(tiny):
  config, variables, _, info = tiny
  with pytest.raises(onnx_export.ExportError, match='without --tta'):
    onnx_backend.OnnxSegmenter(config, None, dict(info, tta_in_graph=True), tta=True)


def test_unknown_opset_and_existing_output(tmp_path):
  with pytest.raises(onnx_export.ExportError, match='--opset=9'):
    onnx_export.check_opset(9)
  out = tmp_path / 'out'
  out.mkdir()
  (out / 'mine.txt').write_text('x')
  with pytest.raises(onnx_export.ExportError, match='--overwrite'):
    onnx_export.prepare_output(out, overwrite=False)
  assert onnx_export.prepare_output(out, overwrite=True) == out
  with pytest.raises(onnx_export.ExportError, match='a file'):
    onnx_export.prepare_output(out / 'mine.txt', overwrite=True)


def run_tool(*args: str) -> subprocess.CompletedProcess:
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'TF_CPP_MIN_LOG_LEVEL': '3'}
  return subprocess.run(
    [sys.executable, 'tools/export_model.py', *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )


def test_command_line_bad_input_is_one_line(tmp_path):
  workdir = tmp_path / 'run'
  workdir.mkdir()
  (workdir / 'config.json').write_text(tiny_config().to_json())
  proc = run_tool(f'--output={tmp_path / "a"}', f'--workdir={workdir}', '--nobioimageio')
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr
  (line,) = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
  assert str(workdir) in line
  proc = run_tool(f'--output={tmp_path / "b"}', '--opset=7')
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr
  assert '--opset=7' in proc.stderr


def test_bioimageio_package_passes_bioimageio_core_test(tiny, tmp_path):
  pytest.importorskip('bioimageio.core', reason='the export extra is not installed')
  from wcsegnet_jax.export import bioimageio_package

  config, variables, _, _ = tiny
  graph_path, info = onnx_export.export(
    config, variables, tmp_path, 'a tiny test model', name='tiny'
  )
  assert (tmp_path / onnx_export.INFO_FILE).is_file()
  assert info['classes'][1] == {'id': 1, 'name': 'neutrophil', 'color': [255, 0, 0]}
  assert info['source']['variables_sha256'] == onnx_export.variables_sha256(variables)
  archive = bioimageio_package.write_package(tmp_path, graph_path, info, licence='CC0-1.0')
  assert archive.is_file()
  folder = tmp_path / bioimageio_package.PACKAGE_DIR
  for name in (
    bioimageio_package.RDF_FILE,
    bioimageio_package.COVER,
    bioimageio_package.DOC,
    bioimageio_package.TEST_INPUT,
    bioimageio_package.TEST_OUTPUT,
    onnx_export.ONNX_FILE,
  ):
    assert (folder / name).is_file(), name
  assert '10.18280/isi.300102' in (folder / bioimageio_package.RDF_FILE).read_text()
  status, details = bioimageio_package.test_package(folder / bioimageio_package.RDF_FILE)
  assert status == 'passed', details


def test_package_of_own_data_needs_a_licence(tiny):
  from wcsegnet_jax.export import bioimageio_package

  _, _, _, info = tiny
  own = dict(info, training_data={'datasets': ['folder']})
  with pytest.raises(errors.UserError, match='--licence'):
    bioimageio_package.licence_of(own, None)
  assert bioimageio_package.licence_of(info, None) == 'GPL-3.0-only'


def _masks(folder: pathlib.Path) -> dict[str, bytes]:
  return {
    p.name: cv2.imread(str(p), cv2.IMREAD_UNCHANGED).tobytes()
    for p in sorted(folder.glob('*_mask.png'))
  }


def test_predict_backend_onnx_writes_the_same_masks(tmp_path):
  """predict --backend=onnx beside the default: the same masks, byte for byte, and the same
  cells.csv, for crops (with the flip average, as the shipped model) and a field."""
  from wcsegnet_jax.inference import output_folder, prediction  # pylint: disable=g-import-not-at-top

  images = tmp_path / 'images'
  images.mkdir()
  for i, crop in enumerate(cell_crops(3, 120, seed=21)):
    fixtures.write_rgb(images / f'crop{i}.png', crop)
  field = tmp_path / 'field'
  field.mkdir()
  fixtures.write_rgb(field / 'field.png', np.concatenate(list(cell_crops(3, 120, seed=4)), 1))
  for name, inputs, scale in (('crops', images, None), ('field', field, 1.0)):
    outputs = {}
    for backend in onnx_backend.BACKENDS:
      out = tmp_path / f'{name}_{backend}'
      prediction.run(
        [str(inputs)],
        prediction.PredictOptions(output=out, model='paper', field_scale=scale, backend=backend),
      )
      outputs[backend] = out
    jax_masks, onnx_masks = _masks(outputs['jax']), _masks(outputs['onnx'])
    assert jax_masks and jax_masks == onnx_masks
    assert (outputs['jax'] / output_folder.CELLS_FILE).read_text() == (
      outputs['onnx'] / output_folder.CELLS_FILE
    ).read_text()


def test_predict_refuses_another_models_onnx_file(tiny, tmp_path):
  from wcsegnet_jax.inference import prediction  # pylint: disable=g-import-not-at-top

  config, _, graph, _ = tiny
  path = tmp_path / 'tiny.onnx'
  path.write_bytes(graph.SerializeToString())
  images = tmp_path / 'images'
  images.mkdir()
  fixtures.write_rgb(images / 'a.png', cell_crops(1, 120)[0])
  with pytest.raises(onnx_export.ExportError) as e:
    prediction.run(
      [str(images)],
      prediction.PredictOptions(output=tmp_path / 'out', backend='onnx', onnx_file=str(path)),
    )
  default = shipped_model.load_config(shipped_model.model_dir())
  assert classes.table_of(config.data).describe() in str(e.value)
  assert classes.table_of(default.data).describe() in str(e.value)


@pytest.fixture(scope='module')
def paper_onnx_file(tmp_path_factory) -> pathlib.Path:
  """The shipped paper model exported once to a file, for predict's --onnx_file."""
  config, variables, _ = shipped_model.load(shipped_model.model_dir('paper'))
  info = onnx_export.describe(config, variables, 'paper', onnx_export.DEFAULT_OPSET, False)
  graph = onnx_export.build_graph(config, variables, onnx_export.DEFAULT_OPSET, False, info)
  path = tmp_path_factory.mktemp('paper_onnx') / 'model.onnx'
  path.write_bytes(graph.SerializeToString())
  return path


def test_resume_continues_an_interrupted_run_of_either_backend(
  paper_onnx_file, tmp_path, monkeypatch
):
  """predict --resume with --backend=onnx, and across backends: the resume check records the
  model and what shapes the results, not what runs the network, as both backends give the same
  masks and cells.csv (the test above); so an interrupted run of one backend continued by
  either ends with the tables of one uninterrupted run."""
  from wcsegnet_jax.inference import output_folder, prediction  # pylint: disable=g-import-not-at-top

  images = tmp_path / 'images'
  images.mkdir()
  for i, crop in enumerate(cell_crops(5, 120, seed=21)):
    fixtures.write_rgb(images / f'crop{i}.png', crop)
  backends = {'jax': {}, 'onnx': {'backend': 'onnx', 'onnx_file': str(paper_onnx_file)}}
  run = lambda out, backend, **kw: prediction.run(
    [str(images)],
    prediction.PredictOptions(output=out, model='paper', batch_size=2, **backends[backend], **kw),
  )
  run(tmp_path / 'whole', 'jax')
  real_crops, calls = segmenter.Segmenter.crops, []  # OnnxSegmenter's too

  def counted_crops(self, crops):
    calls.append(len(crops))
    if len(calls) == 3 and interrupt:
      raise KeyboardInterrupt
    return real_crops(self, crops)

  monkeypatch.setattr(segmenter.Segmenter, 'crops', counted_crops)
  for first, then in (('onnx', 'onnx'), ('jax', 'onnx'), ('onnx', 'jax')):
    out = tmp_path / f'{first}_then_{then}'
    calls.clear()
    interrupt = True
    with pytest.raises(errors.PredictionInterrupted, match='4 of 5 images done'):
      run(out, first)
    calls.clear()
    interrupt = False
    summary = run(out, then, resume=True)
    assert calls == [1] and summary.kept == 4 and len(summary.done) == 5, (first, then)
    assert _masks(out) == _masks(tmp_path / 'whole'), (first, then)
    for name in (output_folder.CELLS_FILE, output_folder.DIFFERENTIAL_FILE):
      assert (out / name).read_text() == (tmp_path / 'whole' / name).read_text(), (first, then)


def test_a_stop_while_onnx_is_set_up_says_how_to_resume(paper_onnx_file, tmp_path, monkeypatch):
  """Ctrl-C (or SIGTERM) while ONNX Runtime's model is read or exported (seconds, once the
  output folder records the run) gets predict's line on how to resume; a resume with nothing
  left to do sets nothing up."""
  from wcsegnet_jax.inference import prediction  # pylint: disable=g-import-not-at-top

  images = tmp_path / 'images'
  images.mkdir()
  for i, crop in enumerate(cell_crops(3, 120, seed=5)):
    fixtures.write_rgb(images / f'crop{i}.png', crop)
  out = tmp_path / 'out'
  run = lambda **kw: prediction.run(
    [str(images)],
    prediction.PredictOptions(
      output=out, model='paper', backend='onnx', onnx_file=str(paper_onnx_file), **kw
    ),
  )
  real_segmenter_for, calls = onnx_backend.segmenter_for, []

  def stopped(*args, **kwargs):
    raise KeyboardInterrupt

  monkeypatch.setattr(onnx_backend, 'segmenter_for', stopped)
  with pytest.raises(
    errors.PredictionInterrupted, match=r'^interrupted: 0 of 3 images .*--resume$'
  ):
    run()
  monkeypatch.setattr(
    onnx_backend,
    'segmenter_for',
    lambda *args, **kwargs: calls.append(1) or real_segmenter_for(*args, **kwargs),
  )
  assert len(run(resume=True).done) == 3 and calls == [1]
  assert run(resume=True).kept == 3 and calls == [1]
