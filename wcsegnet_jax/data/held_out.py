"""Held-out images evaluated straight from a folder (config.eval.raw_dir), without a TFDS build:
each image is read, checked and resized when it is evaluated.
"""

import hashlib
import pathlib
from typing import Sequence

from absl import logging
import ml_collections

from wcsegnet_jax.core import classes
from wcsegnet_jax.core import errors
from wcsegnet_jax.data import color
from wcsegnet_jax.data import label_maps
from wcsegnet_jax.data import records as records_lib


class RawExamples:
  """A random-access source over raw records: each item is read, checked and resized on access.

  Items carry the keys `input_pipeline.eval_batches` reads: image, label_map, cell_type,
  file_id.
  """

  def __init__(
    self, records: Sequence[records_lib.RawRecord], data_config: ml_collections.ConfigDict
  ):
    self.records = list(records)
    self.data_config = data_config
    self.table = classes.table_of(data_config)

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, index: int) -> dict:
    d = self.data_config
    return label_maps.load_example(
      self.records[index],
      self.table,
      d.image_size,
      d.mask_level_tolerance,
      d.mask_max_off_level_fraction,
      color.step_of(d),
    )


def detect_raw_layout(raw_dir: pathlib.Path) -> str:
  """'wbc' (Dataset 1/, Dataset 2/) or 'folder' (images/, masks/); a clear error otherwise."""
  if any((raw_dir / sub).is_dir() for sub in records_lib.WBC_SUBSETS.values()):
    return 'wbc'
  if (raw_dir / 'images').is_dir() and (raw_dir / 'masks').is_dir():
    return 'folder'
  raise errors.DataError(
    f'{raw_dir} (config.eval.raw_dir) is in no known layout: expected '
    f'{" or ".join(repr(s + "/") for s in records_lib.WBC_SUBSETS.values())} with their class '
    f'CSVs '
    f'(layout wbc), or images/ and masks/ (layout folder)'
  )


def report_name(raw_dir: pathlib.Path) -> str:
  """The reports' name of a held-out folder: `held_out/<its name>-<a hash of its path>`, so that
  neither a dataset's test reports (`eval/jiangxi/` for a folder named jiangxi) nor those of
  another folder of the same name are overwritten."""
  digest = hashlib.sha256(str(pathlib.Path(raw_dir).resolve()).encode()).hexdigest()[:6]
  return f'held_out/{pathlib.Path(raw_dir).name}-{digest}'


def raw_eval_sources(
  config: ml_collections.ConfigDict, trained: tuple[dict[str, set[str]], pathlib.Path] | None = None
) -> list[tuple[str, str | None, object]]:
  """[(report name, paper key, source)] for every subset of `config.eval.raw_dir`; the images
  with the ids of the model's training images (`trained`: restore.training_ids) apart, under
  `<name>-training_images`, without the paper's rows beside them."""
  raw_dir = pathlib.Path(config.eval.raw_dir).expanduser().resolve()
  if not raw_dir.is_dir():
    raise errors.DataError(f'{raw_dir} (config.eval.raw_dir) is not a folder')
  layout = config.eval.raw_layout
  if layout == 'auto':
    layout = detect_raw_layout(raw_dir)
  name = report_name(raw_dir)
  if layout == 'folder':
    sources = [('folder', name, None)]
  else:
    sources = [
      (s, f'{name}-{s}', s)
      for s, sub in records_lib.WBC_SUBSETS.items()
      if (raw_dir / sub).is_dir()
    ]
    if not sources:  # layout forced to 'wbc' on another folder: list_wbc_records explains
      sources = [(s, f'{name}-{s}', s) for s in records_lib.WBC_SUBSETS]
  out = []
  for source, name, paper_key in sources:
    records = records_lib.list_raw_records(source, raw_dir, classes.table_of(config.data))
    # Held-out images of only some of the model's types are a fair test of those types.
    records = records_lib.filter_cell_types(
      records, config.data.cell_types, where=f'{source} data in {raw_dir}', every_type=False
    )
    seen = _training_images(records, trained, source, raw_dir, name)
    if unseen := [r for r in records if r.file_id not in {t.file_id for t in seen}]:
      out.append((name, paper_key, RawExamples(unseen, config.data)))
    if seen:
      out.append((f'{name}-training_images', None, RawExamples(seen, config.data)))
  return out


def _training_images(
  records: list[records_lib.RawRecord], trained, source: str, raw_dir: pathlib.Path, name: str
) -> list[records_lib.RawRecord]:
  """The records whose ids the model trained on in the dataset of the same name, said in a
  line: their figures measure recall, not how the model does on new images."""
  if trained is None:
    return []
  ids, where = trained
  dataset = raw_dir.name if source == 'folder' else source
  seen = [r for r in records if r.file_id in ids.get(dataset, ())]
  if seen:
    logging.warning(
      "%d of the %d %s images in %s have the ids of the model's training images "
      '(%s): reported apart as %s-training_images, the other %d as %s.',
      len(seen),
      len(records),
      dataset,
      raw_dir,
      where,
      name,
      len(records) - len(seen),
      name,
    )
  return seen
