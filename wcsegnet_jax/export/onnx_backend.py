"""An exported graph as predict's segmenter: the same path as the JAX one, run by ONNX Runtime.

Only the network changes hands. The colour step still acts on each whole image (a crop before it
is resized, a field before it is cut into tiles) through color.py, as in training, so the graph
runs from its 'standardized' tensor; crops, tiles and the flip average are the Segmenter's and
`evaluate.predict_probs`' (summed in the same order). The probabilities then equal the JAX
path's to float rounding (tests/test_export.py, docs/export.md).
"""

import json
import pathlib

import ml_collections
import numpy as np

from wcsegnet_jax.core import classes
from wcsegnet_jax.export import onnx_export
from wcsegnet_jax.inference import segmenter
from wcsegnet_jax.model import probabilities


def read_graph(path: str | pathlib.Path):
  """(onnx.ModelProto, its model.json) of an exported file; ExportError naming the file."""
  onnx_export.require_extra()
  import onnx

  path = pathlib.Path(path).expanduser()
  if not path.is_file():
    raise onnx_export.ExportError(f'{path}: no such ONNX file (tools/export_model.py writes one)')
  try:
    graph = onnx.load(str(path))
  except Exception as e:  # protobuf raises several unrelated types on bad bytes
    raise onnx_export.ExportError(
      f'{path}: not a readable ONNX file ({type(e).__name__})'
    ) from None
  entries = {p.key: p.value for p in graph.metadata_props}
  if onnx_export.METADATA_KEY not in entries:
    raise onnx_export.ExportError(
      f'{path}: an ONNX file without the {onnx_export.METADATA_KEY} metadata, so not one '
      f'tools/export_model.py wrote; export the model with it'
    )
  return graph, json.loads(entries[onnx_export.METADATA_KEY])


def check_matches(
  path, info: dict, config: ml_collections.ConfigDict, variables: dict | None, source: str
) -> None:
  """Refuses a graph of another model than `config` (+ `variables`), naming both."""
  theirs = classes.table_from_names([c['name'] for c in info['classes']])
  ours = classes.table_of(config.data)
  if theirs.names != ours.names:
    raise onnx_export.ExportError(
      f'{path}: an export of a model of other classes ({theirs.describe()}) than '
      f'{source} ({ours.describe()}); give the ONNX file of that model, or the model it '
      f'was exported from ({info["source"]["model"]})'
    )
  if variables is not None:
    mine = onnx_export.variables_sha256(variables)
    if info['source']['variables_sha256'] != mine:
      raise onnx_export.ExportError(
        f'{path}: exported from other weights ({info["source"]["model"]}, SHA-256 '
        f'{info["source"]["variables_sha256"][:12]}...) than {source} ({mine[:12]}...); '
        f'give that model, or export this one with tools/export_model.py'
      )
  if int(info['image_size']) != int(config.data.image_size):
    raise onnx_export.ExportError(
      f'{path}: takes {info["image_size"]}-pixel inputs, {source} {config.data.image_size}'
    )


def session(graph, threads: int = 0):
  """An ONNX Runtime session of a ModelProto; `threads` 0: ONNX Runtime's default (all cores)."""
  import onnxruntime as ort

  options = ort.SessionOptions()
  options.intra_op_num_threads = int(threads)
  options.inter_op_num_threads = 1
  options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
  options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
  options.log_severity_level = 3  # errors only: its notes on unused initialisers are noise
  return ort.InferenceSession(
    graph.SerializeToString(), options, providers=['CPUExecutionProvider']
  )


def network_part(graph, info: dict):
  """The graph from 'standardized' (after the colour step) to the probabilities."""
  if not info['colour_step']['in_graph']:
    return graph
  import onnx.utils

  return onnx.utils.Extractor(graph).extract_model([onnx_export.STANDARDIZED], [onnx_export.OUTPUT])


class OnnxSegmenter(segmenter.Segmenter):
  """`segmenter.Segmenter` with the network run by ONNX Runtime from an exported graph."""

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    graph,
    info: dict,
    tta: bool,
    batch_size: int = 16,
    threads: int = 0,
    where: str = 'the exported graph',
    _session=None,
  ):
    # The JAX Segmenter's set-up compiles the model; only its fields are wanted here.
    self.config = config
    self.size = int(config.data.image_size)
    self.batch_size = int(batch_size)
    self.tta = bool(tta)
    self.threads = int(threads)
    self._graph, self._info, self._where = graph, info, where
    self._plain = None
    if info.get('tta_in_graph'):
      raise onnx_export.ExportError(
        f'{where}: exported with the flip average inside (--tta); predict averages the flips '
        f'itself: export without --tta'
      )
    self._session = _session or session(network_part(graph, info), threads)
    self._input = self._session.get_inputs()[0].name
    # probabilities.tta_views' own views and undos (jax.numpy on these numpy arrays: a few ms).
    rotations = bool(config.eval.get('tta_rotations', False))
    self._views = probabilities.tta_views(rotations) if tta else None
    self._tiles = self._probabilities

  def _probabilities(self, batch: np.ndarray) -> np.ndarray:
    """probabilities.predict_probs on a uint8 batch (after the colour step), by ONNX Runtime."""
    run = lambda x: self._session.run(None, {self._input: np.ascontiguousarray(x)})[0]
    if self._views is None:
      return run(batch)
    views = self._views
    size = len(batch)
    viewed = run(np.concatenate([np.asarray(view(batch)) for view, _ in views]))
    total = viewed[:size]
    for i, (_, undo) in enumerate(views[1:], start=1):  # predict_probs' order of the sums
      total = total + np.asarray(undo(viewed[i * size : (i + 1) * size]))
    return (total / np.float32(len(views))).astype(np.float32)

  def without_tta(self) -> 'OnnxSegmenter':
    if not self.tta:
      return self
    if self._plain is None:
      self._plain = OnnxSegmenter(
        self.config,
        self._graph,
        self._info,
        False,
        self.batch_size,
        self.threads,
        self._where,
        _session=self._session,
      )
    return self._plain


def from_file(
  path: str | pathlib.Path,
  config: ml_collections.ConfigDict,
  variables: dict | None,
  source: str,
  tta: bool,
  batch_size: int = 16,
  threads: int = 0,
) -> OnnxSegmenter:
  """The segmenter of an exported file, checked to be an export of `source`."""
  graph, info = read_graph(path)
  check_matches(path, info, config, variables, source)
  return OnnxSegmenter(config, graph, info, tta, batch_size, threads, where=str(path))


def from_model(
  config: ml_collections.ConfigDict,
  variables: dict,
  source: str,
  tta: bool,
  batch_size: int = 16,
  threads: int = 0,
) -> OnnxSegmenter:
  """The segmenter of a model exported in memory first (a few seconds; needs jax2onnx)."""
  onnx_export.require_extra()
  info = onnx_export.describe(config, variables, source, onnx_export.DEFAULT_OPSET, False)
  graph = onnx_export.build_graph(config, variables, onnx_export.DEFAULT_OPSET, False, info)
  return OnnxSegmenter(config, graph, info, tta, batch_size, threads, where=source)


BACKENDS = ('jax', 'onnx')


def segmenter_for(
  config: ml_collections.ConfigDict,
  variables: dict,
  tta: bool,
  batch_size: int = 16,
  backend: str = 'jax',
  onnx_file: str | None = None,
  threads: int = 0,
  source: str = 'the model',
) -> segmenter.Segmenter:
  """predict's segmenter: JAX's, or ONNX Runtime's from `onnx_file` (checked to be an export of
  this model) or from the model exported in memory."""
  if backend == 'jax':
    if onnx_file:
      raise onnx_export.ExportError(f'--onnx_file={onnx_file} is for --backend=onnx')
    return segmenter.Segmenter(config, variables, tta, batch_size)
  if backend != 'onnx':
    raise onnx_export.ExportError(f'--backend={backend}: expected one of {BACKENDS}')
  if onnx_file:
    return from_file(onnx_file, config, variables, source, tta, batch_size, threads)
  return from_model(config, variables, source, tta, batch_size, threads)
