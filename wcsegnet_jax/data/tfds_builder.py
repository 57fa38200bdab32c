"""TFDS builder for WBC nucleus segmentation: the WBC Image Dataset's two subsets and plain folders.

Written as array_record with zlib-encoded `Tensor` features, so neither building nor reading needs
TensorFlow. Each build is named by what it was built from (source, image size, the classes: kept
cell types in their order and the cytoplasm, split, and the raw files' names, sizes and
modification times), so a changed raw folder or config gets a new build instead of a stale one.
"""

import contextlib
import csv
import errno
import fcntl
import hashlib
import json
import logging as std_logging
import os
import pathlib
import socket
from typing import Any, Iterator

from absl import logging
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import utils as tfds_utils

from wcsegnet_jax.core import classes
from wcsegnet_jax.core import config_keys
from wcsegnet_jax.core import errors
from wcsegnet_jax.core import files
from wcsegnet_jax.data import color as color_lib
from wcsegnet_jax.data import label_maps
from wcsegnet_jax.data import records as records_lib
from wcsegnet_jax.data import splits

TFDS_DIR_ENV = 'WCSEG_TFDS_DIR'
# The public repository of Zheng et al. (2018), for users online without a local copy.
ARCHIVE_URL = 'https://github.com/zxaoyou/segmentation_WBC/archive/refs/heads/master.zip'
ARCHIVE_FOLDER = 'segmentation_WBC-master'
REPOSITORY_URL = 'https://github.com/zxaoyou/segmentation_WBC'
# Asked, with a short timeout, before a download: offline, TFDS retries for minutes and then
# fails with a long traceback.
ARCHIVE_HOST, ARCHIVE_PORT, REACHABLE_TIMEOUT_S = 'github.com', 443, 3.0
SPLIT_IDS_FILE = 'split_ids.csv'


class WbcSegmentationConfig(tfds.core.BuilderConfig):
  """One build: a source and every setting that changes its examples or split."""

  def __init__(
    self,
    *,
    source: str,
    raw_dir: pathlib.Path | None,
    image_size: int,
    cell_types: tuple[str, ...],
    cytoplasm: bool,
    test_fraction: float,
    split_seed: int,
    mask_level_tolerance: int,
    mask_max_off_level_fraction: float,
    name: str,
    color: str = 'none',
    color_reference: tuple[float, ...] = (),
    every_type: bool = True,
  ):
    super().__init__(
      name=name,
      version=WbcSegmentation.VERSION,
      description=f'{source} at {image_size}x{image_size}',
    )
    self.source = source
    self.raw_dir = raw_dir
    self.image_size = image_size
    self.cell_types = cell_types
    self.cytoplasm = cytoplasm
    self.table = classes.class_table(cell_types, cytoplasm)
    self.test_fraction = test_fraction
    self.split_seed = split_seed
    self.mask_level_tolerance = mask_level_tolerance
    self.mask_max_off_level_fraction = mask_max_off_level_fraction
    self.color_step = color_lib.color_step(color, color_reference)
    self.every_type = every_type


class WbcSegmentation(tfds.core.GeneratorBasedBuilder):
  """WBC images with per-pixel labels of the configured classes (`classes.ClassTable`): 0
  background, the cell types in config order, and the cytoplasm last when configured."""

  VERSION = tfds.core.Version('1.3.0')
  RELEASE_NOTES = {
    '1.0.0': 'First release.',
    '1.1.0': 'Class ids from config.data.cell_types (in order) and cytoplasm.',
    '1.2.0': 'Label maps shrunk by the class covering most of each pixel, not '
    'nearest (which sat 0.4 px off the image at 300 -> 120).',
    '1.3.0': 'Images and masks turned as their EXIF orientation says (a rotated '
    'JPEG was read on its side).',
  }

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.image_size
    return self.dataset_info_from_configs(
      features=tfds.features.FeaturesDict(
        {
          'image': tfds.features.Tensor(shape=(size, size, 3), dtype=np.uint8, encoding='zlib'),
          'label_map': tfds.features.Tensor(shape=(size, size), dtype=np.uint8, encoding='zlib'),
          'cell_type': tfds.features.Scalar(
            dtype=np.int32, doc=self.builder_config.table.describe()
          ),
          'dataset': tfds.features.Text(),
          'file_id': tfds.features.Text(),
        }
      ),
      homepage='https://github.com/zxaoyou/segmentation_WBC',
      citation='Zheng et al., Fast and robust segmentation of white blood cell images by '
      'self-supervised learning, Micron 107 (2018) 55-71.',
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    cfg = self.builder_config
    raw_dir = cfg.raw_dir
    if raw_dir is None:  # online: the public repository's archive
      raw_dir = pathlib.Path(dl_manager.download_and_extract(ARCHIVE_URL)) / ARCHIVE_FOLDER
    split = split_records(
      cfg.source, raw_dir, cfg.table, cfg.test_fraction, cfg.split_seed, cfg.every_type
    )
    return {name: self._generate_examples(records) for name, records in split.items() if records}

  # TFDS prints "Downloading and preparing dataset Unknown size ..." to stdout, even for a local
  # folder that downloads nothing; one log line each says what happens instead.
  def _log_download_bytes(self) -> None:
    logging.info(
      'Building %s examples into %s (once; later runs reuse them).',
      self.builder_config.source,
      self.data_dir,
    )

  def _log_download_done(self) -> None:
    logging.info('Built %s.', self.data_dir)

  def _generate_examples(self, records: list[records_lib.RawRecord]):
    cfg = self.builder_config
    for record in records:
      example = label_maps.load_example(
        record,
        cfg.table,
        cfg.image_size,
        cfg.mask_level_tolerance,
        cfg.mask_max_off_level_fraction,
        cfg.color_step,
      )
      yield record.file_id, {**example, 'dataset': dataset_name(cfg.source, cfg.raw_dir)}


def dataset_name(source: str, raw_dir: pathlib.Path | None) -> str:
  """The name reports use: the subset's name, or the folder's for the `folder` source."""
  return raw_dir.name if source == 'folder' and raw_dir is not None else source


def split_records(
  source: str,
  raw_dir: pathlib.Path,
  table: classes.ClassTable,
  test_fraction: float,
  split_seed: int,
  every_type: bool = True,
) -> dict[str, list[records_lib.RawRecord]]:
  """Lists, filters (to `table`'s cell types, each of which must have an image unless not
  `every_type`) and splits the raw records of one source."""
  records = records_lib.list_raw_records(source, raw_dir, table)
  records = records_lib.filter_cell_types(
    records, table.cell_types, where=f'{source} data in {raw_dir}', every_type=every_type
  )
  return splits.stratified_split(records, test_fraction, split_seed)


def source_dir(source: str, data_config: ml_collections.ConfigDict) -> pathlib.Path | None:
  """The raw folder of a source (None: download the public archive)."""
  if source == 'folder':
    if not data_config.folder_dir:
      raise errors.DataError(
        'dataset "folder" needs config.data.folder_dir (a folder holding images/ and masks/)'
      )
    path = pathlib.Path(data_config.folder_dir).expanduser()
    if not path.is_dir():
      raise errors.DataError(f'folder dataset {path} does not exist (config.data.folder_dir)')
    return path
  return records_lib.resolve_raw_dir(data_config.raw_dir)


def tfds_dir(data_config: ml_collections.ConfigDict) -> pathlib.Path:
  path = data_config.tfds_dir or os.environ.get(TFDS_DIR_ENV, '~/tensorflow_datasets')
  return pathlib.Path(path).expanduser()


# The data paths a workdir's config.json records as resolved, so that a later evaluation of the
# workdir reads the same data without $WCSEG_DATA_DIR or $WCSEG_TFDS_DIR.
RECORDED_PATHS = tuple(k.removeprefix('data.') for k in config_keys.DATA_LOCATION_KEYS)


def resolved_paths(data_config: ml_collections.ConfigDict) -> dict[str, str]:
  """data.raw_dir, tfds_dir and folder_dir as a run reads them (the config, else the
  environment), absolute; '' where none is given (raw_dir: the download)."""
  raw_dir = records_lib.resolve_raw_dir(data_config.raw_dir)
  folder = data_config.folder_dir
  return {
    'raw_dir': str(raw_dir.resolve()) if raw_dir else '',
    'tfds_dir': str(tfds_dir(data_config).resolve()),
    'folder_dir': str(pathlib.Path(folder).expanduser().resolve()) if folder else '',
  }


def with_recorded_paths(
  data_config: ml_collections.ConfigDict, recorded: dict
) -> ml_collections.ConfigDict:
  """A copy of `data_config` with the paths of `recorded` (a saved config's data section)
  where neither the config nor the environment gives one."""
  given = {
    'raw_dir': data_config.raw_dir or os.environ.get(records_lib.RAW_DIR_ENV, ''),
    'tfds_dir': data_config.tfds_dir or os.environ.get(TFDS_DIR_ENV, ''),
    'folder_dir': data_config.folder_dir,
  }
  out = ml_collections.ConfigDict(data_config.to_dict())
  for key in RECORDED_PATHS:
    if not given[key] and recorded.get(key):
      out[key] = recorded[key]
  return out


def _fingerprint(
  source: str, raw_dir: pathlib.Path | None, settings: dict[str, Any], table: classes.ClassTable
) -> str:
  """A short hash of the build's settings and its raw files' names, sizes, times and types."""
  h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
  if raw_dir is not None:
    h.update(str(raw_dir.resolve()).encode())
    for r in records_lib.list_raw_records(source, raw_dir, table):
      image, mask = r.image_path.stat(), r.mask_path.stat()
      h.update(
        f'{r.file_id}|{image.st_size}|{image.st_mtime_ns}|{mask.st_size}|'
        f'{mask.st_mtime_ns}|{r.cell_type}\n'.encode()
      )
  else:
    h.update(ARCHIVE_URL.encode())
  return h.hexdigest()[:10]


def get_builder(source: str, data_config: ml_collections.ConfigDict) -> WbcSegmentation:
  """The builder of one configured source (not yet prepared)."""
  raw_dir = source_dir(source, data_config)
  settings = dict(
    source=source,
    image_size=int(data_config.image_size),
    cell_types=tuple(data_config.cell_types),
    cytoplasm=bool(data_config.cytoplasm),
    test_fraction=float(data_config.test_fraction),
    split_seed=int(data_config.split_seed),
    mask_level_tolerance=int(data_config.mask_level_tolerance),
    mask_max_off_level_fraction=float(data_config.mask_max_off_level_fraction),
  )
  if data_config.get('fields_dir'):  # fine-tuning: the model already knows the lab's other types
    settings.update(every_type=False)
  if data_config.get('color', 'none') != 'none':  # builds without a colour step keep their names
    settings.update(
      color=str(data_config.color),
      color_reference=color_lib.reference_of(data_config),
    )
  table = classes.class_table(settings['cell_types'], settings['cytoplasm'])
  fingerprint = _fingerprint(source, raw_dir, settings, table)
  name = f'{source}-{settings["image_size"]}-{fingerprint}'
  config = WbcSegmentationConfig(name=name, raw_dir=raw_dir, **settings)
  with _tfds_quiet():
    return WbcSegmentation(config=config, data_dir=str(tfds_dir(data_config)))


def prepare(source: str, data_config: ml_collections.ConfigDict) -> WbcSegmentation:
  """Builds a source's array_record files once (later calls reuse them) and its split list.

  Runs started together on one tfds_dir build in turn: the first builds while the others wait
  for its lock, then reuse its build (two builds at once removed each other's folders)."""
  builder = get_builder(source, data_config)
  if not _is_complete(builder):
    root = tfds_dir(data_config)
    if not builder.is_prepared() and builder.builder_config.raw_dir is None:
      check_archive_reachable(root)  # no data and no network: one line within seconds
    existed = _folders_under(root)  # before the lock's folder: a failed build removes it too
    with _build_lock(root, source):
      builder = get_builder(source, data_config)  # another run may have built it meanwhile
      if not builder.is_prepared():
        _build(builder, root, existed)
  ids_path = pathlib.Path(builder.data_dir) / SPLIT_IDS_FILE
  if not ids_path.exists():
    write_split_ids(builder, ids_path)
  return builder


def _is_complete(builder: WbcSegmentation) -> bool:
  return builder.is_prepared() and (pathlib.Path(builder.data_dir) / SPLIT_IDS_FILE).exists()


def _build(builder: WbcSegmentation, root: pathlib.Path, existed: set[pathlib.Path]) -> None:
  """Builds the array_record files; a failed build removes the empty folders not in `existed`."""
  try:
    with _tfds_quiet():
      builder.download_and_prepare(file_format='array_record')
  except BaseException:
    _remove_new_empty_folders(root, existed)  # a failed build leaves no empty shells
    raise
  ids_path = pathlib.Path(builder.data_dir) / SPLIT_IDS_FILE
  write_split_ids(builder, ids_path)


@contextlib.contextmanager
def _build_lock(root: pathlib.Path, source: str) -> Iterator[None]:
  """Holds an flock on the tfds folder itself (no lock file is left behind; the OS drops the
  lock if the process dies). A folder removed by a failed build while we waited is locked
  anew."""
  while True:
    try:
      root.mkdir(parents=True, exist_ok=True)
      if not os.access(root, os.W_OK | os.X_OK):
        raise OSError(errno.EACCES, 'not writable')
      fd = os.open(root, os.O_RDONLY)
    except OSError as e:
      raise errors.DataError(
        f'the {source} data needs a new build in {root} (config.data.tfds_dir), which cannot '
        f'be written ({e.strerror}): make it writable, or pass '
        f'--config.data.tfds_dir=A_WRITABLE_FOLDER'
      ) from None
    try:
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        logging.info('Waiting for another run building data in %s.', root)
        fcntl.flock(fd, fcntl.LOCK_EX)
      if root.is_dir() and os.stat(root).st_ino == os.fstat(fd).st_ino:
        yield
        return
    finally:
      os.close(fd)  # releases the lock


def no_data_message(root: pathlib.Path) -> str:
  """Where the data is expected, how to give it and where to get it (one line)."""
  return (
    f'no WBC data: neither config.data.raw_dir nor ${records_lib.RAW_DIR_ENV} is set, no '
    f'build is '
    f'in {root}, and {ARCHIVE_HOST} cannot be reached to download it. Download the WBC '
    f'Image Dataset from {REPOSITORY_URL} (Code > Download ZIP), unpack it, and '
    f'set {records_lib.RAW_DIR_ENV}=/path/to/segmentation_WBC-master (the folder holding '
    f'"Dataset 1/" and "Dataset 2/") or pass --config.data.raw_dir=that folder'
  )


def check_archive_reachable(root: pathlib.Path) -> None:
  """A DataError within seconds (`no_data_message`) when the archive's host cannot be
  reached, instead of TFDS's minutes of retries."""
  try:
    socket.create_connection((ARCHIVE_HOST, ARCHIVE_PORT), timeout=REACHABLE_TIMEOUT_S).close()
  except OSError:
    raise errors.DataError(no_data_message(root)) from None


@contextlib.contextmanager
def _tfds_quiet():
  """Without TFDS's progress bars and INFO lines (per split: seconds here, with long temporary
  paths) and its 'Using custom data configuration' warning (every build of ours is a custom
  configuration); the two log lines of `WbcSegmentation` say what happens."""

  def not_custom_config(record) -> bool:
    if 'tensorflow_datasets' in record.pathname and record.levelno <= std_logging.INFO:
      return False
    return 'Using custom data configuration' not in record.getMessage()

  absl_logger = logging.get_absl_logger()
  was_active = tfds_utils.tqdm_utils._active  # pylint: disable=protected-access
  tfds.display_progress_bar(False)
  absl_logger.addFilter(not_custom_config)
  try:
    yield
  finally:
    absl_logger.removeFilter(not_custom_config)
    tfds.display_progress_bar(was_active)


def _folders_under(root: pathlib.Path) -> set[pathlib.Path]:
  return {p for p in root.rglob('*') if p.is_dir()} | {root} if root.is_dir() else set()


def _remove_new_empty_folders(root: pathlib.Path, existed: set[pathlib.Path]) -> None:
  """Removes the folders a failed build created that are empty (deepest first)."""
  if not root.is_dir():
    return
  for folder in sorted(_folders_under(root) - existed, key=lambda p: len(p.parts), reverse=True):
    with contextlib.suppress(OSError):  # not empty: someone else's, or a partial build
      folder.rmdir()
  with contextlib.suppress(OSError):
    if root not in existed:
      root.rmdir()


def write_split_ids(builder: WbcSegmentation, path: pathlib.Path) -> None:
  """Writes `split,file_id,cell_type` for every example, atomically."""
  rows = []
  for split in sorted(builder.info.splits):
    source = builder.as_data_source(split)
    ids = sorted(
      (as_str(source[i]['file_id']), int(source[i]['cell_type'])) for i in range(len(source))
    )
    rows += [(split, fid, builder.builder_config.table.names[t]) for fid, t in ids]
  files.write_csv_atomic(path, ('split', 'file_id', 'cell_type'), rows)


def read_split_ids(builder: WbcSegmentation) -> dict[str, list[str]]:
  """{split: sorted file ids} of a prepared build, from its split list."""
  ids = {}
  with open(pathlib.Path(builder.data_dir) / SPLIT_IDS_FILE, newline='') as f:
    for row in csv.DictReader(f):
      ids.setdefault(row['split'], []).append(row['file_id'])
  return {split: sorted(found) for split, found in ids.items()}


def as_str(text: bytes | str) -> str:
  """TFDS returns Text features as bytes when read without TensorFlow."""
  return text.decode('utf-8') if isinstance(text, bytes) else text


def data_source(builder: WbcSegmentation, split: str):
  """A random-access source of decoded numpy examples (what `tfds.data_source` returns)."""
  if split not in builder.info.splits:
    raise errors.DataError(
      f'{builder.info.full_name} has no {split!r} split '
      f'(has {sorted(builder.info.splits)}): too few images to split?'
    )
  return builder.as_data_source(split)
