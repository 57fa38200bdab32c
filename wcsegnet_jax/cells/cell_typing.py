"""Typing a cell from its crop and masks: its colours, shape and (optionally) the net's features.

The nucleus-pixel vote (`metrics.predicted_cell_type`) types a cell by what most of its nucleus
pixels look like, one pixel's context at a time. Haematologists type a cell by the whole of it:
the nucleus' shape and the colour and granules of the cytoplasm (an eosinophil's orange granules,
a basophil's dark ones). A cell typer sees the same: the cell's crop at the training scale (the
cell centred, as in the training crops) goes through the segmentation net once more, for its
masks and nucleus class probabilities, the cell's colour (CIELAB mean and spread of nucleus,
cytoplasm and surroundings) and shape (`morphometry`); the net's features at the levels
`levels_of` names (`models.EncoderStage` and `models.DecoderStage` outputs) may join them,
averaged over the nucleus and over the cytoplasm. A linear softmax classifier (`LinearTyper`)
turns these into type probabilities. It is small (a few thousand weights at most), so a
lab fits it on its own typed cells in seconds, and it is fitted on the WBC Image Dataset's cells
for the shipped model (`tools/fit_cell_typer.py`).

Why linear: a few hundred typed cells per lab cannot fit more without overfitting; the net's
features already hold what the segmentation learned. The shipped five-type model's own typer
uses none of them (colour, shape and nucleus probabilities only): on another lab's cells, before
any fitting on them, the net's features misled it more than they helped.
"""

import dataclasses
import functools
import io
import json
import pathlib
from typing import Sequence

import cv2
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from wcsegnet_jax.cells import cells
from wcsegnet_jax.core import classes
from wcsegnet_jax.core import files
from wcsegnet_jax.data import color
from wcsegnet_jax.data import normalize
from wcsegnet_jax.model import decoding
from wcsegnet_jax.model import models

TYPER_FILE = 'cell_typer.npz'
ROW_BLOCK = 256  # fit_linear's rows are padded to a multiple of this
TYPER_INFO_FILE = 'cell_typer.json'
SHAPE_FEATURES = (
  'log_nucleus_area',
  'circularity',
  'solidity',
  'nucleus_parts',
  'log_cell_area',
  'nc_ratio',
)


def _captured(module: nn.Module, method: str) -> bool:
  return method == '__call__' and isinstance(module, (models.EncoderStage, models.DecoderStage))


def levels_of(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The stages whose features a typer pools: the `typer.encoder_stages` finest encoder
  stages and the `typer.decoder_stages` finest decoder stages; none when both are 0 (the cell's
  colour, shape and nucleus probabilities only). The deeper the stages, the more specific to
  the training labs' images: untrained on another lab's cells, the fewer the better; fitted on
  that lab's own cells, a few help (docs/changelog.md, "A typer of colour and shape")."""
  levels = int(config.model.num_levels)
  return tuple(f'encoder{i}' for i in range(min(config.typer.encoder_stages, levels))) + tuple(
    f'decoder{levels - 1 - j}' for j in range(min(config.typer.decoder_stages, levels))
  )


class CellFeatures:
  """Per crop: the class probabilities and the pooled features of the cell nearest its centre.

  Crops are (N, size, size, 3) uint8 at the training scale after the model's colour step."""

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    variables: dict,
    levels: Sequence[str],
    batch_size: int = 16,
  ):
    self.config = config
    self.levels = tuple(sorted(levels))
    self.table = classes.table_of(config.data)
    self.size = int(config.data.image_size)
    self.batch_size = int(batch_size)
    self.rules = cells.CellRules()
    model = models.model_for(config)

    def forward(v, images):
      x = normalize.model_inputs(images, config.data)
      logits, state = model.apply(
        v, x, train=False, capture_intermediates=_captured, mutable=['intermediates']
      )
      maps = {
        name: out['__call__'][0]
        for name, out in state['intermediates'].items()
        if name in self.levels
      }
      return jax.nn.softmax(logits, axis=-1), maps

    jitted = jax.jit(forward)
    self._forward = lambda x: jax.device_get(jitted(variables, x))

  def __call__(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, F) float32, found (N,) bool: a cell was found near the crop's centre)."""
    features, found = [], []
    for first in range(0, len(crops), self.batch_size):
      chunk = crops[first : first + self.batch_size]
      batch = np.zeros((self.batch_size, self.size, self.size, 3), np.uint8)
      batch[: len(chunk)] = chunk
      probs, maps = self._forward(batch)
      for i in range(len(chunk)):
        vector = self._one(
          chunk[i], np.asarray(probs[i]), {k: np.asarray(v[i]) for k, v in maps.items()}
        )
        found.append(vector is not None)
        features.append(vector)
    width = next((len(v) for v in features if v is not None), 0)
    return (
      np.stack([np.zeros(width, np.float32) if v is None else v for v in features])
      if features
      else np.zeros((0, 0), np.float32),
      np.array(found, bool),
    )

  def central_cell(
    self, pred_map: np.ndarray, probs: np.ndarray
  ) -> tuple[np.ndarray, cells.Cell] | None:
    """(the cell's mask, the cell) of the crop's cell whose nucleus centre is nearest the
    crop's centre; None where the crop shows no cell."""
    found, labels = cells.find_cells(pred_map, probs, self.table, self.rules)
    if not found:
      return None
    centre = (self.size - 1) / 2
    distance = [np.hypot(c.centre[0] - centre, c.centre[1] - centre) for c in found]
    k = int(np.argmin(distance))
    return labels == k + 1, found[k]

  def _one(self, crop: np.ndarray, probs: np.ndarray, maps: dict) -> np.ndarray | None:
    pred_map = np.asarray(decoding.decode(probs, self.table, self.config.eval.decode))
    picked = self.central_cell(pred_map, probs)
    if picked is None:
      return None
    own, cell = picked
    nucleus = own & np.isin(pred_map, self.table.nucleus_ids)
    cytoplasm = own & ~nucleus if self.table.cytoplasm else _ring(nucleus)
    parts = []
    for name in self.levels:
      parts += [_pooled(maps[name], nucleus, self.size), _pooled(maps[name], cytoplasm, self.size)]
    ids = list(self.table.nucleus_ids)
    parts.append(probs[nucleus][:, ids].mean(0))
    # The background (plasma, red cells) is the colour reference a technologist's eye uses:
    # with it, the classifier can weigh the cell's colours against what is around it.
    background = pred_map == classes.BACKGROUND
    parts += [
      _colour(crop, nucleus),
      _colour(crop, cytoplasm),
      _colour(crop, background),
      _shape(cell),
    ]
    return np.concatenate(parts).astype(np.float32)


def _ring(nucleus: np.ndarray, width: int = 8) -> np.ndarray:
  """Without a cytoplasm class: the band around the nucleus where the cytoplasm lies."""
  grown = cv2.dilate(nucleus.astype(np.uint8), np.ones((2 * width + 1,) * 2, np.uint8)) > 0
  return grown & ~nucleus


def _pooled(feature_map: np.ndarray, mask: np.ndarray, size: int) -> np.ndarray:
  """The mean of an (h, w, C) feature map over a (size, size) mask's pixels: the model pads its
  input to a multiple of its poolings (reflect), so the mask is padded alike (with zeros) and
  area-averaged down to the map's resolution, each map position weighted by its share."""
  h, w, _ = feature_map.shape
  padded_h = h * -(-size // h)
  top = (padded_h - size) // 2
  left = top
  full = np.zeros((padded_h, padded_h), np.float32)
  full[top : top + size, left : left + size] = mask
  weights = cv2.resize(full, (w, h), interpolation=cv2.INTER_AREA)
  total = weights.sum()
  if total <= 0:
    return np.zeros(feature_map.shape[-1], np.float32)
  return (feature_map * weights[..., None]).sum((0, 1)) / total


def _colour(crop: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """CIELAB mean and standard deviation of the crop over a mask (zeros where it is empty)."""
  if not mask.any():
    return np.zeros(6, np.float32)
  lab = cv2.cvtColor(crop, cv2.COLOR_RGB2LAB).astype(np.float32)[mask]
  return np.concatenate([lab.mean(0), lab.std(0)]) / 255.0


def _shape(cell: cells.Cell) -> np.ndarray:
  m = cell.nucleus
  return np.array(
    [
      np.log1p(m['area_px']),
      m['circularity'],
      m['solidity'],
      min(m['nucleus_parts'], 4),
      np.log1p(cell.cell_area_px or 0),
      min(cell.nc_ratio or 0.0, 5.0),
    ],
    np.float32,
  )


def cell_crops(
  image: np.ndarray,
  centres: Sequence[tuple[float, float]],
  size: int,
  data_config: ml_collections.ConfigDict,
  crop_color: str,
) -> np.ndarray:
  """(N, size, size, 3) crops of an image at the training scale (before the colour step)
  centred on the cells, after the model's colour step: on each crop alone ('crop': a cell's
  colours measured against its own surroundings, as in the one-cell training crops; better on
  another lab's cells untrained) or on the whole image ('field': as the segmentation sees it;
  better once fitted on a lab's own cells)."""
  if crop_color == 'field':
    standardized = color.standardize(image, data_config)
    return np.stack([crop_around(standardized, c, size) for c in centres])
  return np.stack([color.standardize(crop_around(image, c, size), data_config) for c in centres])


def crop_around(image: np.ndarray, centre: tuple[float, float], size: int) -> np.ndarray:
  """A (size, size) window of an image centred on (x, y), mirrored out past its borders."""
  x0 = int(round(centre[0] - size / 2))
  y0 = int(round(centre[1] - size / 2))
  pad = size
  padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode='symmetric')
  return padded[y0 + pad : y0 + pad + size, x0 + pad : x0 + pad + size]


@dataclasses.dataclass
class LinearTyper:
  """A softmax classifier over standardized cell features; `cell_types` names its outputs."""

  cell_types: tuple[str, ...]
  mean: np.ndarray
  scale: np.ndarray
  weights: np.ndarray
  bias: np.ndarray
  temperature: float = 1.0
  info: dict = dataclasses.field(default_factory=dict)

  def logits(self, features: np.ndarray) -> np.ndarray:
    return ((features - self.mean) / self.scale) @ self.weights + self.bias

  def probabilities(self, features: np.ndarray) -> np.ndarray:
    """(N, len(cell_types)) type probabilities, temperature-scaled."""
    return np.asarray(jax.nn.softmax(self.logits(features) / self.temperature, axis=-1))

  def save(self, directory: str | pathlib.Path) -> None:
    directory = pathlib.Path(directory)
    arrays = {k: getattr(self, k) for k in ('mean', 'scale', 'weights', 'bias')}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    files.write_bytes_atomic(directory / TYPER_FILE, buffer.getvalue())
    files.write_json_atomic(
      directory / TYPER_INFO_FILE,
      {'cell_types': list(self.cell_types), 'temperature': self.temperature, **self.info},
    )

  @classmethod
  def load(cls, directory: str | pathlib.Path) -> 'LinearTyper | None':
    """The typer saved in a folder, or None where it has none."""
    directory = pathlib.Path(directory)
    if not (directory / TYPER_FILE).is_file():
      return None
    info = json.loads((directory / TYPER_INFO_FILE).read_text())
    with np.load(directory / TYPER_FILE) as arrays:
      values = {k: arrays[k] for k in ('mean', 'scale', 'weights', 'bias')}
    cell_types = tuple(info.pop('cell_types'))
    temperature = float(info.pop('temperature', 1.0))
    return cls(cell_types, temperature=temperature, info=info, **values)


def fit_linear(
  features: np.ndarray,
  labels: np.ndarray,
  cell_types: Sequence[str],
  sample_weight: np.ndarray | None = None,
  l2: float = 1e-2,
  steps: int = 500,
) -> LinearTyper:
  """A `LinearTyper` fitted by full-batch L-BFGS on the weighted cross-entropy plus
  l2 * |weights|^2 (features standardized first); classes weighted to equal total weight, so
  the rare types (basophils, eosinophils) are not ignored."""
  features = np.asarray(features, np.float32)
  labels = np.asarray(labels, np.int32)
  k = len(cell_types)
  weight = (
    np.ones(len(labels), np.float32)
    if sample_weight is None
    else np.asarray(sample_weight, np.float32)
  )
  per_class = np.bincount(labels, weights=weight, minlength=k)
  weight = (
    weight / np.maximum(per_class[labels], 1e-9) * weight.sum() / max((per_class > 0).sum(), 1)
  )
  weight = weight / weight.sum()
  mean = features.mean(0)
  scale = features.std(0) + 1e-6
  # Rows padded with weight 0 to a multiple of ROW_BLOCK: the loss is the same, and folds of
  # nearby sizes share one compiled step.
  pad = -len(labels) % ROW_BLOCK
  data = (
    jnp.asarray(np.pad((features - mean) / scale, ((0, pad), (0, 0)))),
    jnp.asarray(np.pad(labels, (0, pad))),
    jnp.asarray(np.pad(weight, (0, pad)), jnp.float32),
    jnp.float32(l2),
  )
  init, step = _lbfgs()
  carry = init({'w': jnp.zeros((features.shape[1], k)), 'b': jnp.zeros(k)})
  for _ in range(steps):
    carry = step(carry, data)
  params = jax.device_get(carry[0])
  return LinearTyper(
    tuple(cell_types),
    mean,
    scale,
    np.asarray(params['w'], np.float32),
    np.asarray(params['b'], np.float32),
  )


@functools.cache
def _lbfgs():
  """(init, step) of L-BFGS on `fit_linear`'s loss, built once: `step` is jitted with the data
  as arguments, so fits of the same shapes (cross-validation folds) compile once."""
  import optax  # pylint: disable=g-import-not-at-top  # fitting only: predict never loads it

  def loss(params, data):
    x, y, w, l2 = data
    ce = optax.softmax_cross_entropy_with_integer_labels(x @ params['w'] + params['b'], y)
    return (w * ce).sum() + l2 * (params['w'] ** 2).sum()

  solver = optax.lbfgs()

  @jax.jit
  def step(carry, data):
    params, state = carry
    value_fn = functools.partial(loss, data=data)
    value, grad = optax.value_and_grad_from_state(value_fn)(params, state=state)
    updates, state = solver.update(grad, state, params, value=value, grad=grad, value_fn=value_fn)
    return optax.apply_updates(params, updates), state

  return (lambda params: (params, solver.init(params))), step


class CellTyper:
  """A model's cell typer: `LinearTyper` over `CellFeatures`, typing the cells of an image."""

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    variables: dict,
    linear: LinearTyper,
    batch_size: int = 16,
  ):
    table = classes.table_of(config.data)
    if tuple(linear.cell_types) != tuple(table.cell_types):
      raise ValueError(f'the cell typer types {linear.cell_types} but the model {table.cell_types}')
    self.linear = linear
    self.class_ids = np.array([table.type_id(t) for t in linear.cell_types])
    self.uncertain_below = float(linear.info.get('uncertain_below', 0.0))
    self.crop_color = linear.info.get('crop_color', 'field')
    self.features = CellFeatures(config, variables, linear.info['levels'], batch_size)

  def probabilities(self, image: np.ndarray, centres: Sequence[tuple[float, float]]) -> np.ndarray:
    """(N, types) probabilities of the cells centred at `centres` (x, y) of an image at the
    training scale (before the colour step); a row of NaN where the crop shows no cell."""
    if not len(centres):
      return np.zeros((0, len(self.class_ids)), np.float32)
    crops = cell_crops(
      image, centres, self.features.size, self.features.config.data, self.crop_color
    )
    x, found = self.features(crops)
    if not found.any():  # then x has no columns: no feature width to take from a found cell
      return np.full((len(centres), len(self.class_ids)), np.nan, np.float32)
    probs = self.linear.probabilities(x).astype(np.float32)
    probs[~found] = np.nan
    return probs

  def retyped(
    self, found: Sequence[cells.Cell], image: np.ndarray, to_training_scale: tuple[float, float]
  ) -> list[cells.Cell]:
    """`found` (cells of a map at the image's own size) with the typer's type and confidence;
    `image` is at the training scale (before the colour step), `to_training_scale` the (x, y)
    factors taking the map's pixels there. A cell whose crop shows no cell keeps its voted type."""
    fx, fy = to_training_scale
    probs = self.probabilities(image, [(c.centre[0] * fx, c.centre[1] * fy) for c in found])
    out = []
    for cell, p in zip(found, probs):
      if np.isnan(p).any():
        out.append(cell)
        continue
      best = int(p.argmax())
      out.append(
        dataclasses.replace(cell, class_id=int(self.class_ids[best]), confidence=float(p[best]))
      )
    return out


def load_typer(
  directory: str | pathlib.Path,
  config: ml_collections.ConfigDict,
  variables: dict,
  batch_size: int = 16,
) -> CellTyper | None:
  """The cell typer saved beside a model (a workdir or a shipped model's folder), or None."""
  linear = LinearTyper.load(directory)
  return None if linear is None else CellTyper(config, variables, linear, batch_size)


def recoloured(
  pred_map: np.ndarray, labels: np.ndarray, found: Sequence[cells.Cell], nucleus_ids: Sequence[int]
) -> np.ndarray:
  """The map with each cell's nucleus pixels set to the cell's type, so that masks and
  overlays show the type cells.csv gives."""
  out = np.array(pred_map, copy=True)
  nucleus = np.isin(out, list(nucleus_ids))
  for k, cell in enumerate(found, start=1):
    out[(labels == k) & nucleus] = cell.class_id
  return out
