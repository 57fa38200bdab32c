"""A trained model as one ONNX graph: raw RGB in, class probabilities out.

The graph, in order (tensor names in quotes):
  'image'          (B, S, S, 3) uint8 RGB as read, S the model's input size, B any batch size
  colour step      data.color 'reinhard' or 'two_point' (wcsegnet_jax/data/color.py): each
                   image's CIELAB mapped to the reference, rounded back to uint8 ->
                   'standardized'; absent for data.color 'none'
  normalisation    data.normalize ('dataset': (x - mean) / std; 'per_image')
  WCSegNet         in inference mode (BatchNorm's running statistics), softmax over classes;
                   with `tta`, the average over the four flips, in predict's order
  'probabilities'  (B, S, S, C) float32, C the model's classes (model.json)

Predict applies the colour step to a whole image before resizing it or cutting it into tiles, so
its ONNX backend runs the graph from 'standardized' and does that step as the JAX path does
(onnx_backend.py). Inside the graph the step follows the CIELAB definition (sRGB, D65), which
OpenCV's conversion approximates: a graph fed a raw crop differs from the colour step of color.py
by a level here and there (docs/export.md has the measured difference).

A JSON file beside the graph (model.json, also stored in the graph's metadata) records the
classes, their colours, the input size and scale, the colour step, the training data, the
source weights' checksum and the opset.
"""

import datetime
import hashlib
import json
import logging
import pathlib
import platform
from typing import Callable

from flax import serialization
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from wcsegnet_jax.core import classes
from wcsegnet_jax.core import errors
from wcsegnet_jax.core import files
from wcsegnet_jax.data import color
from wcsegnet_jax.model import models
from wcsegnet_jax.model import probabilities

ONNX_FILE = 'model.onnx'
INFO_FILE = 'model.json'
INPUT = 'image'
STANDARDIZED = 'standardized'
OUTPUT = 'probabilities'
METADATA_KEY = 'wcsegnet_jax'  # the graph's metadata_props entry holding model.json
FORMAT = 'wcsegnet_jax-onnx-1'
# Opsets the exported graph is tested with: from 18 (jax2onnx writes ReduceMean's axes as an input,
# which opset 18 introduced) to 23 (the newest ONNX Runtime 1.2x reads). 18 is the default: the
# oldest, so the most runtimes read it.
OPSETS = tuple(range(18, 24))
DEFAULT_OPSET = 18
EXTRA_HINT = "install the export extra: pip install -e '.[export]'"

# CIELAB of sRGB under D65, with the constants OpenCV uses (color.py's conversion).
_RGB_TO_XYZ = np.array(
  [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]],
  np.float32,
)
_XYZ_TO_RGB = np.array(
  [
    [3.240479, -1.53715, -0.498535],
    [-0.969256, 1.875991, 0.041556],
    [0.055648, -0.204043, 1.057311],
  ],
  np.float32,
)
_WHITE = np.array([0.950456, 1.0, 1.088754], np.float32)
_EPSILON = 0.008856  # CIE's (6/29)^3, as OpenCV rounds it
_KAPPA = 903.3
_F_EPSILON = 7.787 * _EPSILON + 16.0 / 116.0


class ExportError(errors.UserError, ValueError):
  """An export or an exported file that cannot be used as asked; the message names the file."""


def require_extra() -> None:
  """ExportError naming the missing package when the `export` extra is not installed."""
  for module in ('jax2onnx', 'onnx', 'onnxruntime'):
    try:
      __import__(module)
    except ImportError:
      raise ExportError(f'the Python package {module} is not installed; {EXTRA_HINT}') from None


def check_opset(opset: int) -> int:
  if int(opset) not in OPSETS:
    raise ExportError(
      f'--opset={opset}: not an opset this export supports; use one of '
      f'{OPSETS[0]}..{OPSETS[-1]} (default {DEFAULT_OPSET})'
    )
  return int(opset)


# --- The colour step in jax.numpy (traced into the graph) ---


def rgb_to_lab(rgb: jax.Array) -> jax.Array:
  """(..., 3) RGB in [0, 1] -> CIELAB (L 0..100)."""
  linear = jnp.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
  xyz = linear @ jnp.asarray((_RGB_TO_XYZ / _WHITE[:, None]).T)
  f = jnp.where(
    xyz > _EPSILON, jnp.maximum(xyz, _EPSILON) ** (1.0 / 3.0), 7.787 * xyz + 16.0 / 116.0
  )
  lightness = jnp.where(xyz[..., 1] > _EPSILON, 116.0 * f[..., 1] - 16.0, _KAPPA * xyz[..., 1])
  return jnp.stack(
    [lightness, 500.0 * (f[..., 0] - f[..., 1]), 200.0 * (f[..., 1] - f[..., 2])], axis=-1
  )


def lab_to_rgb(lab: jax.Array) -> jax.Array:
  """CIELAB -> (..., 3) RGB clipped to [0, 1]."""
  lightness, a, b = lab[..., 0], lab[..., 1], lab[..., 2]
  dark = lightness <= _KAPPA * _EPSILON
  fy = jnp.where(dark, 7.787 * (lightness / _KAPPA) + 16.0 / 116.0, (lightness + 16.0) / 116.0)
  y = jnp.where(dark, lightness / _KAPPA, fy**3)
  fxz = jnp.stack([a / 500.0 + fy, fy - b / 200.0], axis=-1)
  fxz = jnp.where(fxz <= _F_EPSILON, (fxz - 16.0 / 116.0) / 7.787, fxz**3)
  xyz = jnp.stack([fxz[..., 0], y, fxz[..., 1]], axis=-1)
  rgb = jnp.clip(xyz @ jnp.asarray((_XYZ_TO_RGB * _WHITE[None, :]).T), 0.0, 1.0)
  return jnp.where(
    rgb <= 0.0031308, 12.92 * rgb, 1.055 * jnp.maximum(rgb, 0.0031308) ** (1.0 / 2.4) - 0.055
  )


def reinhard(images: jax.Array, reference) -> jax.Array:
  """color.reinhard on a (B, H, W, 3) uint8 batch, each image by its own statistics."""
  reference = np.asarray(reference, np.float32)
  lab = rgb_to_lab(images.astype(jnp.float32) / 255.0)
  mean = lab.mean(axis=(1, 2), keepdims=True)
  std = jnp.sqrt(jnp.mean(jnp.square(lab - mean), axis=(1, 2), keepdims=True))
  return _to_uint8((lab - mean) * (reference[3:] / jnp.maximum(std, color.MIN_STD)) + reference[:3])


def _to_uint8(lab: jax.Array) -> jax.Array:
  """uint8 RGB of a CIELAB batch, rounded as color.py rounds."""
  rgb = jnp.floor(jnp.clip(lab_to_rgb(lab) * 255.0 + 0.5, 0.0, 255.0))
  return rgb.astype(jnp.uint8)


def two_point(images: jax.Array, reference) -> jax.Array:
  """color.two_point on a (B, H, W, 3) uint8 batch, each image by its own anchors (the same
  ranks of its sorted L values as color.py picks)."""
  reference = np.asarray(reference, np.float32)
  lab = rgb_to_lab(images.astype(jnp.float32) / 255.0)
  flat = lab.reshape(lab.shape[0], -1, 3)
  lightness = flat[..., 0]
  order = jnp.sort(lightness, axis=1)
  bright_rank, dark_rank = color.anchor_ranks(flat.shape[1])
  bright_mask = lightness >= order[:, bright_rank : bright_rank + 1]
  dark_mask = lightness <= order[:, dark_rank : dark_rank + 1]

  def masked_mean(mask):
    weights = mask.astype(jnp.float32)[..., None]
    return (flat * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)

  bright, dark = masked_mean(bright_mask), masked_mean(dark_mask)
  factor = color.stretch(dark - bright, reference[3:] - reference[:3], xp=jnp)
  return _to_uint8((lab - bright[:, None, None]) * factor[:, None, None] + reference[:3])


def colour_fn(data_config: ml_collections.ConfigDict) -> Callable | None:
  """The colour step of `data_config` on a uint8 batch, or None for 'none'."""
  name = data_config.get('color', 'none')
  if name == 'none':
    return None
  steps = {'reinhard': reinhard, 'two_point': two_point}
  if name not in steps:
    raise ExportError(
      f'data.color={name!r}: no ONNX form of this colour step; expected one of {color.COLOR_STEPS}'
    )
  step, reference = steps[name], color.reference_of(data_config)
  return lambda images: step(images, reference)


# --- The network ---


def probabilities_fn(
  config: ml_collections.ConfigDict, variables: dict, tta: bool
) -> Callable[[jax.Array], jax.Array]:
  """(B, S, S, 3) uint8 (after the colour step) -> (B, S, S, C) float32 probabilities, as
  `probabilities.predict_probs`; the flip views are split by a reshape, which a symbolic batch
  allows (predict_probs slices by the batch size)."""
  model = models.model_for(config)
  variables = {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}
  data = config.data
  if not tta:
    return lambda images: probabilities.predict_probs(model, variables, images, data, False)
  if config.eval.get('tta_rotations', False):
    raise ExportError(
      'eval.tta_rotations: the export averages the four flips only; export '
      'without --tta (predict then averages the eight views itself)'
    )

  views = probabilities.tta_views(False)

  def averaged(images):
    shape = images.shape
    stacked = jnp.concatenate([view(images) for view, _ in views])
    viewed = probabilities.predict_probs(model, variables, stacked, data, False)
    viewed = viewed.reshape((len(views),) + shape[:3] + viewed.shape[-1:])
    total = viewed[0]
    for i, (_, undo) in enumerate(views[1:], start=1):  # summed in predict_probs' order
      total = total + undo(viewed[i])
    return total / len(views)

  return averaged


def _not_jax2onnx_info(record: logging.LogRecord) -> bool:
  return not ('jax2onnx' in record.pathname and record.levelno <= logging.INFO)


def _to_onnx(fn: Callable, size: int, opset: int, input_name: str, output_name: str, name: str):
  import jax2onnx  # the export extra

  # jax2onnx logs each conversion's parameters on the root logger, onnx_ir a line per layer:
  # none a user can act on.
  logging.getLogger('onnx_ir').setLevel(logging.ERROR)
  root = logging.getLogger()
  if _not_jax2onnx_info not in root.filters:
    root.addFilter(_not_jax2onnx_info)
  spec = jax.ShapeDtypeStruct(jax.export.symbolic_shape(f'B, {size}, {size}, 3'), jnp.uint8)
  return jax2onnx.to_onnx(
    fn, [spec], model_name=name, opset=opset, input_names=[input_name], output_names=[output_name]
  )


def build_graph(
  config: ml_collections.ConfigDict,
  variables: dict,
  opset: int = DEFAULT_OPSET,
  tta: bool = False,
  info: dict | None = None,
):
  """The onnx.ModelProto of the model: 'image' -> ['standardized' ->] 'probabilities'."""
  import onnx  # the export extra
  import onnx.compose

  opset = check_opset(opset)
  size = int(config.data.image_size)
  core = _to_onnx(
    probabilities_fn(config, variables, tta),
    size,
    opset,
    STANDARDIZED if colour_fn(config.data) else INPUT,
    OUTPUT,
    'wcsegnet',
  )
  step = colour_fn(config.data)
  if step is None:
    graph = core
  else:
    colour = _to_onnx(step, size, opset, INPUT, STANDARDIZED, 'colour_step')
    colour = onnx.compose.add_prefix(
      colour, 'colour_step/', rename_inputs=False, rename_outputs=False
    )
    graph = onnx.compose.merge_models(
      colour, core, io_map=[(STANDARDIZED, STANDARDIZED)], producer_name='wcsegnet_jax'
    )
  # jax2onnx annotates intermediate shapes, and names the flip views' 4B batch 'B' as well, which
  # ONNX Runtime then takes at its word; without the annotations it infers them itself.
  del graph.graph.value_info[:]
  if step is not None:  # kept: where predict's ONNX backend starts the graph
    graph.graph.value_info.append(
      onnx.helper.make_tensor_value_info(STANDARDIZED, onnx.TensorProto.UINT8, ['B', size, size, 3])
    )
  graph.graph.name = 'wcsegnet'
  graph.producer_name = 'wcsegnet_jax'
  if info is not None:
    del graph.metadata_props[:]
    entry = graph.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(info, sort_keys=True)
  onnx.checker.check_model(graph)
  return graph


# --- What the JSON beside the graph records ---


def variables_sha256(variables: dict) -> str:
  """SHA-256 of the float32 parameters and BatchNorm statistics as flax msgpack: the same
  number for the same weights, whether read from a checkpoint or a shipped model."""
  stored = {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}
  data = serialization.msgpack_serialize(
    jax.tree.map(lambda x: np.asarray(x, np.float32), jax.device_get(stored))
  )
  return hashlib.sha256(data).hexdigest()


def training_data(config: ml_collections.ConfigDict, shipped_info: dict | None) -> dict:
  data = {
    'datasets': list(config.data.datasets),
    'cell_types': list(config.data.cell_types),
    'cytoplasm': bool(config.data.cytoplasm),
  }
  if shipped_info and shipped_info.get('images'):
    data['train_images'] = {
      name: len(split.get('train', [])) for name, split in shipped_info['images'].items()
    }
  if shipped_info and shipped_info.get('licence'):
    data['licence'] = shipped_info['licence']
  return data


def describe(
  config: ml_collections.ConfigDict,
  variables: dict,
  source: str,
  opset: int,
  tta: bool,
  shipped_info: dict | None = None,
  name: str = 'model',
) -> dict:
  """model.json: everything a consumer of the graph needs to feed it and read its output."""
  import jax2onnx
  import onnx

  table = classes.table_of(config.data)
  size = int(config.data.image_size)
  colour_step = config.data.get('color', 'none')
  return {
    'format': FORMAT,
    'name': name,
    'opset': int(opset),
    'input': {
      'name': INPUT,
      'dtype': 'uint8',
      'shape': ['batch', size, size, 3],
      'layout': 'NHWC, RGB as read (0..255)',
    },
    'output': {
      'name': OUTPUT,
      'dtype': 'float32',
      'shape': ['batch', size, size, table.num_classes],
      'meaning': 'class probabilities (softmax), summing to 1 over the last axis',
    },
    'classes': [
      {'id': i, 'name': name, 'color': [int(c) for c in rgb]}
      for i, (name, rgb) in enumerate(zip(table.names, table.colors))
    ],
    'image_size': size,
    'scale': (
      "the training crops' magnification: a white cell about 60-75 pixels across in "
      f'a {size}x{size} input; resize fields to it first (predict --field_scale)'
    ),
    'colour_step': {
      'name': colour_step,
      'reference': list(color.reference_of(config.data)),
      'in_graph': colour_step != 'none',
      'output': STANDARDIZED if colour_step != 'none' else None,
    },
    'normalisation': {
      'normalize': config.data.normalize,
      'mean': [float(v) for v in config.data.mean],
      'std': [float(v) for v in config.data.std],
    },
    'tta_in_graph': bool(tta),
    'decode': config.eval.get('decode', 'argmax'),
    'training_data': training_data(config, shipped_info),
    'source': {
      'model': source,
      'variables_sha256': variables_sha256(variables),
      'shipped_file_sha256': (shipped_info or {}).get('variables_sha256'),
      'parameters': models.count_params(variables['params']),
    },
    'exported': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
    'versions': {
      'jax': jax.__version__,
      'jax2onnx': getattr(jax2onnx, '__version__', '?'),
      'onnx': onnx.__version__,
      'python': platform.python_version(),
    },
    'config': json.loads(config.to_json()),
  }


def prepare_output(out_dir: str | pathlib.Path, overwrite: bool) -> pathlib.Path:
  """The output folder, new or empty; with `overwrite` an existing one's files are replaced."""
  out_dir = pathlib.Path(out_dir).expanduser()
  if out_dir.exists() and not out_dir.is_dir():
    raise ExportError(f'--output={out_dir}: a file, not a folder')
  if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
    raise ExportError(
      f'--output={out_dir}: exists and holds files; give a new folder, or '
      f'--overwrite to replace them'
    )
  out_dir.mkdir(parents=True, exist_ok=True)
  return out_dir


def export(
  config: ml_collections.ConfigDict,
  variables: dict,
  out_dir: str | pathlib.Path,
  source: str,
  opset: int = DEFAULT_OPSET,
  tta: bool = False,
  shipped_info: dict | None = None,
  name: str = 'model',
) -> tuple[pathlib.Path, dict]:
  """Writes DIR/model.onnx and DIR/model.json; returns the graph's path and the JSON."""
  require_extra()
  opset = check_opset(opset)
  info = describe(config, variables, source, opset, tta, shipped_info, name)
  graph = build_graph(config, variables, opset, tta, info)
  out_dir = pathlib.Path(out_dir)
  files.write_bytes_atomic(out_dir / ONNX_FILE, graph.SerializeToString())
  files.write_json_atomic(out_dir / INFO_FILE, info)
  return out_dir / ONNX_FILE, info
