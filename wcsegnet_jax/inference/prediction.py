"""predict's work, callable from Python: images in, masks, overlays, cells.csv, differential.csv
and a contact sheet out (the command, its flags and its doc: `wcsegnet_jax/predict.py`)."""

import dataclasses
import math
import pathlib
import sys
from typing import Iterable, Sequence

from absl import logging
import cv2
import ml_collections
import numpy as np
import tqdm

from wcsegnet_jax.cells import cell_typing
from wcsegnet_jax.cells import cells
from wcsegnet_jax.cells import overlays
from wcsegnet_jax.core import classes
from wcsegnet_jax.core import errors
from wcsegnet_jax.core import files
from wcsegnet_jax.data import image_files
from wcsegnet_jax.inference import cells_table
from wcsegnet_jax.inference import fields
from wcsegnet_jax.inference import input_images
from wcsegnet_jax.inference import model_loading
from wcsegnet_jax.inference import options as options_lib
from wcsegnet_jax.inference import output_folder
from wcsegnet_jax.inference import scale_estimate
from wcsegnet_jax.inference import segmenter
from wcsegnet_jax.model import decoding

PredictOptions = options_lib.PredictOptions


@dataclasses.dataclass
class PredictionSummary:
  """What a run did: the images done, and the ones skipped with the reason."""

  done: list[str]
  skipped: list[tuple[str, str]]
  no_cells: list[str] = dataclasses.field(default_factory=list)  # done, but no cell found
  kept: int = 0  # of `done`, those an earlier run did (--resume)
  differential: list[dict] = dataclasses.field(default_factory=list)  # cells.differential
  cell_types: tuple[str, ...] = ()  # the types the model tells apart
  not_counted: int = 0  # cells listed in cells.csv but left out of the differential

  def text(self) -> str:
    n = len(self.done) + len(self.skipped)
    line = (
      f'{n} image{"" if n == 1 else "s"}: {len(self.done)} segmented, {len(self.skipped)} skipped'
    )
    if self.kept:
      line += f' ({self.kept} of them by the run resumed, kept)'
    if self.skipped:
      line += ': ' + '; '.join(f'{path}: {why}' for path, why in self.skipped)
    if self.no_cells:
      shown = ', '.join(self.no_cells[:5]) + (', ...' if len(self.no_cells) > 5 else '')
      line += (
        f'\nno cell found in {len(self.no_cells)} image'
        f'{"" if len(self.no_cells) == 1 else "s"}: {shown}'
      )
    if self.differential:
      *types, total = self.differential
      line += f'\n{total["count"]} cell{"" if total["count"] == 1 else "s"}' + (
        ': ' + ', '.join(f'{r["cell_type"]} {r["count"]} ({r["percent"]:.1f}%)' for r in types)
        if total['count']
        else ''
      )
    if self.not_counted:
      line += (
        f'\n{self.not_counted} more object{"" if self.not_counted == 1 else "s"} not '
        f'counted (cut by the image border, or too small or misshapen for a cell): in '
        f'{output_folder.CELLS_FILE} with counted=0 and the reason; --count_all_cells '
        f'counts them'
      )
    if unknown := [t for t in classes.ALL_CELL_TYPES if t not in self.cell_types]:
      line += (
        f'\nthe model types {", ".join(self.cell_types)} only: a cell of another type '
        f'({", ".join(unknown)}) is counted as the nearest of these'
      )
    return line


def probs_at_size(probs: np.ndarray, height: int, width: int) -> np.ndarray:
  """Class probabilities (S, S, C) resized bilinearly to (height, width, C)."""
  if probs.shape[:2] == (height, width):
    return probs
  return cv2.resize(probs, (width, height), interpolation=cv2.INTER_LINEAR)


def write_image_outputs(
  output: pathlib.Path,
  stem: str,
  path: pathlib.Path,
  image: np.ndarray,
  probs: np.ndarray,
  pixel_size_um: float | None,
  table: classes.ClassTable,
  cell_rules: cells.CellRules,
  decode: str,
  retype=None,
  uncertain_below: float = 0.0,
) -> tuple[list[dict], list[int]]:
  """Writes one image's mask (at its own size) and overlay (`overlays.draw_cells`); returns its
  cells.csv rows and the class ids of the cells the differential counts. `cell_rules` are those
  for the image's own pixel scale; `retype` (the model's cell typer, if it has one) types the
  cells found, and their nuclei are drawn in its types. A cell typed with a (calibrated)
  confidence below `uncertain_below` is flagged for review and counted as UNCERTAIN, as a
  technologist sets a cell aside for a second look."""
  probs = probs_at_size(probs, *image.shape[:2])
  pred_map = decoding.decode(probs, table, decode).astype(np.uint8)
  mask_file, overlay_file = output_folder.image_output_names(stem)
  found, labels = cells.find_cells(pred_map, probs, table, cell_rules)
  if retype is not None and found:
    found = retype(found)
    pred_map = cell_typing.recoloured(pred_map, labels, found, table.nucleus_ids)
  files.write_bytes_atomic(output / mask_file, image_files.encode_png(table.colorize(pred_map)))
  reasons = [cells.not_counted_reasons(cell, cell_rules) for cell in found]
  counted = [cell_rules.count_excluded or not why for why in reasons]
  review = [cell.confidence < uncertain_below for cell in found]
  drawn = [
    overlays.DrawnCell(
      k, cell.class_id, table.names[cell.class_id] + '?' * doubt, cell.confidence, count
    )
    for k, (cell, count, doubt) in enumerate(zip(found, counted, review), start=1)
  ]
  files.write_bytes_atomic(
    output / overlay_file, image_files.encode_png(overlays.draw_cells(image, labels, drawn, table))
  )
  rows = [
    cells_table.cell_row(
      input_images.shown(path), mask_file, k, cell, table.names, pixel_size_um, why, count
    )
    for k, (cell, why, count) in enumerate(zip(found, reasons, counted), start=1)
  ]
  for row, doubt in zip(rows, review):
    row['review'] = int(doubt)
  return rows, [
    cells.UNCERTAIN if doubt else cell.class_id
    for cell, count, doubt in zip(found, counted, review)
    if count
  ]


def write_contact_sheet(
  output: pathlib.Path, overlay_files: Sequence[str], table: classes.ClassTable
) -> None:
  """output_folder.CONTACT_SHEET_FILE: the overlays written, small and captioned, one image for
  review."""
  tiles = [
    (
      name.removesuffix('_overlay.png'),
      overlays.thumbnail(overlays.without_legend(overlays.read_rgb(output / name), table)),
    )
    for name in overlay_files
  ]
  files.write_bytes_atomic(
    output / output_folder.CONTACT_SHEET_FILE,
    image_files.encode_png(overlays.contact_sheet(tiles, table)),
  )


def _chunks(items: Sequence, size: int) -> Iterable[Sequence]:
  for start in range(0, len(items), size):
    yield items[start : start + size]


def estimated_scale(segment: segmenter.Segmenter, path: pathlib.Path, image: np.ndarray) -> float:
  """The field's scale estimated from its nuclei, or FALLBACK_SCALE with a warning naming it."""
  scale = scale_estimate.estimate_scale(segment, image, segment.config.eval.decode)
  if scale is None:
    tqdm.tqdm.write(
      f'warning: {path}: no nucleus found at any scale, so its scale cannot be '
      f'estimated; segmented at --field_scale={scale_estimate.FALLBACK_SCALE}',
      file=sys.stderr,
    )
    return scale_estimate.FALLBACK_SCALE
  return scale


# Training crops are 120 and 300 pixels; an image far larger is likely a field of many cells.
FIELD_HINT_SIDE = 1000


def _field_hint(image: np.ndarray, field_scale: float | None) -> str:
  """For an image that found no cell: a hint when it looks like a field read as one crop."""
  height, width = image.shape[:2]
  if field_scale is not None or max(height, width) <= FIELD_HINT_SIDE:
    return ''
  return (
    f' (at {width}x{height} it may be a field of many cells, squashed here into one '
    f'crop: try --field_scale=1.0, or 0.4 for cells of ~300 pixels)'
  )


def _crop_retype(typer, segment: segmenter.Segmenter, image: np.ndarray):
  """Types the cells of a crop on the crop as the model saw it (resized whole), or None."""
  if typer is None:
    return None
  height, width = image.shape[:2]
  factors = (segment.size / width, segment.size / height)
  # Resized only for an image that has cells to type.
  return lambda found: typer.retyped(found, image_files.resize_image(image, segment.size), factors)


def _field_retype(typer, segment: segmenter.Segmenter, image: np.ndarray, scale: float):
  """Types the cells of a field on the field at the training scale, or None."""
  if typer is None:
    return None
  return lambda found: typer.retyped(found, fields.resize_field(image, scale), (scale, scale))


def _segmenter(
  config: ml_collections.ConfigDict,
  variables: dict,
  tta: bool,
  batch_size: int,
  options: PredictOptions,
  model_source: str,
) -> segmenter.Segmenter:
  """What runs the network: JAX, or ONNX Runtime (the export extra: docs/export.md)."""
  if options.backend == 'jax' and not options.onnx_file:
    return segmenter.Segmenter(config, variables, tta, batch_size)
  from wcsegnet_jax.export import onnx_backend  # pylint: disable=g-import-not-at-top

  return onnx_backend.segmenter_for(
    config,
    variables,
    tta,
    batch_size,
    options.backend,
    options.onnx_file,
    options.threads,
    model_source,
  )


def predict_files(
  config: ml_collections.ConfigDict,
  variables: dict,
  paths: Sequence[pathlib.Path],
  options: PredictOptions,
  model_source: str = '',
  progress: bool = False,
  typer: cell_typing.CellTyper | None = None,
) -> PredictionSummary:
  """Segments `paths` with `variables`; writes masks, overlays, cells.csv and differential.csv
  into `options.output` (`options` as `PredictOptions.checked` leaves them).

  Without `options.field_scale` each image is one crop, resized whole to the training size; with
  it, a field resized by that scale (AUTO_SCALE: estimated per image, `scale_estimate.py`) and
  segmented in tiles of the training size (`fields.segment_field`). `options.cell_rules` are at
  the training scale. With `typer`, cells are typed by it (`cell_typing.CellTyper`), not by the
  vote of their nucleus pixels. Each batch's files are listed in OUTPUTS_FILE before they are
  written, so even an interrupted run leaves a complete list for --overwrite; its cells.csv rows
  are added and its images recorded as done after, so Ctrl-C leaves the tables of the images
  done (errors.PredictionInterrupted says so) and `options.resume` continues without redoing
  them. `progress`: bars of images and of a field's tiles (for a terminal).
  """
  options = options.checked()
  output = pathlib.Path(options.output).expanduser()
  output.mkdir(parents=True, exist_ok=True)
  field_scale, batch_size, cell_rules = options.field_scale, options.batch_size, options.cell_rules
  tta = bool(config.eval.tta) if options.tta is None else options.tta  # None: as evaluated
  table = classes.table_of(config.data)
  settings = output_folder.run_settings(
    model_source,
    table.cell_types,
    tta,
    field_scale,
    options.pixel_size_um,
    dataclasses.asdict(cell_rules),
  )
  earlier = output_folder.resumable_run(output, settings) if options.resume else None
  listing = {**settings, 'files': [], 'done': [], **(earlier or {}), 'complete': False}
  done = {d['file']: d for d in listing['done']}
  rows = cells_table.read_cells(
    output / output_folder.CELLS_FILE,
    {output_folder.image_output_names(d['stem'])[0] for d in done.values()},
  )
  summary = PredictionSummary([], [], cell_types=table.cell_types)
  summary.done = list(done)
  summary.no_cells = [d['file'] for d in done.values() if not d.get('cells')]
  summary.kept = len(done)
  files.write_json_atomic(output / output_folder.OUTPUTS_FILE, listing)
  cells_table.write_cells(output / output_folder.CELLS_FILE, rows)  # the kept rows, or none
  todo = [path for path in paths if input_images.shown(path) not in done]
  size = int(config.data.image_size)
  if field_scale is None:  # crops are batched across images, a field's tiles per image
    batch_size = max(1, min(batch_size, len(todo)))
  used_stems = {d['stem'] for d in done.values()}
  bars = _Progress(len(paths), len(paths) - len(todo), progress)
  try:
    # Set up inside: a stop during ONNX's export (seconds) says how to resume, as any other.
    segment = (
      _segmenter(config, variables, tta, batch_size, options, model_source) if todo else None
    )
    for chunk in _chunks(todo, 1 if field_scale else batch_size):
      images = []
      for path in chunk:
        try:
          # A field whose scale is yet to be estimated is checked at its own size.
          images.append(
            (
              path,
              input_images.check_image_size(
                path,
                input_images.read_input(path),
                1.0 if field_scale == options_lib.AUTO_SCALE else field_scale,
              ),
            )
          )
        except errors.DataError as e:
          tqdm.tqdm.write(f'skipped: {input_images.shown(e)}', file=sys.stderr)
          shown = input_images.shown(path)
          summary.skipped.append((shown, input_images.shown(e).removeprefix(f'{shown}: ')))
          bars.image_done()
      if not images:
        continue
      if field_scale is None:
        probs = segment.crops([image for _, image in images])
        # A training pixel spans sqrt(h * w) / size pixels of the crop (its mean side ratio).
        scales = [math.sqrt(image.shape[0] * image.shape[1]) / size for _, image in images]
        retypes = [_crop_retype(typer, segment, image) for _, image in images]
      else:
        ((path, image),) = images
        scale = (
          field_scale
          if field_scale != options_lib.AUTO_SCALE
          else estimated_scale(segment, path, image)
        )
        probs = [segment.field(image, scale, tiles_done=bars.tiles_done)]
        scales = [1.0 / scale]
        retypes = [_field_retype(typer, segment, image, scale)]
      stems = [output_folder._unique_stem(path, used_stems) for path, _ in images]
      names = [name for stem in stems for name in output_folder.image_output_names(stem)]
      listing['files'] += [name for name in names if name not in listing['files']]
      files.write_json_atomic(output / output_folder.OUTPUTS_FILE, listing)
      batch_rows, batch_done = [], []
      for stem, (path, image), image_probs, scale, retype in zip(
        stems, images, probs, scales, retypes
      ):
        image_rows, _ = write_image_outputs(
          output,
          stem,
          path,
          image,
          image_probs,
          options.pixel_size_um,
          table,
          cell_rules.scaled(scale),
          config.eval.decode,
          retype,
          typer.uncertain_below if typer is not None else 0.0,
        )
        for row in image_rows:
          row['field_scale'] = f'{1.0 / scale:.4f}'
        if not image_rows:
          tqdm.tqdm.write(
            f'{input_images.shown(path)}: no cell found' + _field_hint(image, field_scale),
            file=sys.stderr,
          )
          summary.no_cells.append(input_images.shown(path))
        batch_rows += image_rows
        batch_done.append(
          {'file': input_images.shown(path), 'stem': stem, 'cells': len(image_rows)}
        )
      # The rows first, then the record that the images are done: a run stopped between the
      # two redoes these images when resumed (`cells_table.read_cells` drops their rows).
      cells_table.append_cells(output / output_folder.CELLS_FILE, batch_rows)
      rows += batch_rows
      listing['done'] += batch_done
      files.write_json_atomic(output / output_folder.OUTPUTS_FILE, listing)
      summary.done += [d['file'] for d in batch_done]
      for _ in batch_done:
        bars.image_done()
  except KeyboardInterrupt:
    bars.close()  # the message that follows gets a line of its own
    kept = {output_folder.image_output_names(d['stem'])[0] for d in listing['done']}
    rows = [row for row in rows if row['mask_file'] in kept]
    _write_tables(output, rows, table, summary, typer is not None)
    n = len(listing['done'])
    raise errors.PredictionInterrupted(
      f'interrupted: {n} of {len(paths)} image{"" if len(paths) == 1 else "s"} done, their '
      f'cells in {output / output_folder.CELLS_FILE}; to continue without redoing them, run '
      f'the same command with --resume'
    ) from None
  finally:
    bars.close()
  if not summary.done and earlier is None:  # all skipped: no empty results to block a rerun
    for name in (output_folder.OUTPUTS_FILE, output_folder.CELLS_FILE):
      (output / name).unlink(missing_ok=True)
    return summary
  _write_tables(output, rows, table, summary, typer is not None)
  write_contact_sheet(
    output, [output_folder.image_output_names(d['stem'])[1] for d in listing['done']], table
  )
  files.write_json_atomic(output / output_folder.OUTPUTS_FILE, {**listing, 'complete': True})
  return summary


def _write_tables(
  output: pathlib.Path,
  rows: list[dict],
  table: classes.ClassTable,
  summary: PredictionSummary,
  with_uncertain: bool,
) -> None:
  """cells.csv (whole, atomically) and differential.csv of `rows` (a cell flagged for review
  counted as uncertain, `with_uncertain`: a model with a cell typer); the summary's counts."""
  names = [table.names[i] for i in table.nucleus_ids]
  class_ids = [
    cells.UNCERTAIN if int(row['review']) else table.names.index(row['predicted_type'])
    for row in rows
    if int(row['counted'])
  ]
  summary.differential = cells.differential(
    class_ids, names, table.nucleus_ids, with_uncertain=with_uncertain
  )
  summary.not_counted = sum(1 for row in rows if not int(row['counted']))
  cells_table.write_cells(output / output_folder.CELLS_FILE, rows)
  cells_table.write_differential(output / output_folder.DIFFERENTIAL_FILE, summary.differential)


class _Progress:
  """predict's progress on a terminal: a bar of images, and below it a bar of the tiles of the
  field being segmented (a large field takes minutes). Nothing when `enabled` is false."""

  def __init__(self, total: int, initial: int, enabled: bool):
    self.enabled = enabled
    self.images = tqdm.tqdm(
      total=total,
      initial=initial,
      unit='image',
      dynamic_ncols=True,
      disable=not enabled or total < 2,
    )
    self.tiles = None

  def image_done(self) -> None:
    self.images.update(1)
    if self.tiles is not None:
      self.tiles.close()
      self.tiles = None

  def tiles_done(self, done: int, total: int) -> None:
    if not self.enabled or total <= 1:
      return
    if self.tiles is None:
      self.tiles = tqdm.tqdm(
        total=total,
        unit='tile',
        leave=False,
        dynamic_ncols=True,
        position=0 if self.images.disable else 1,
      )
    self.tiles.update(done - self.tiles.n)

  def close(self) -> None:
    if self.tiles is not None:
      self.tiles.close()
      self.tiles = None
    self.images.close()


def run(inputs: Sequence[str], options: PredictOptions) -> PredictionSummary:
  """The command's work, callable from Python: the options checked, the inputs listed, the
  output folder prepared, the model loaded (`model_loading.load_model`), then the images.

  With `checkpoint='pretrained'`, or with neither a `workdir` nor a checkpoint named, the
  model shipped in the package; a checkpoint path needs no `workdir`; with a `workdir` and no
  checkpoint named, its config's `eval.checkpoint` (the latest, unless changed).
  """
  options = options.checked()
  workdir, output = options.workdir, options.output
  which = None if options.checkpoint is None else str(options.checkpoint).strip()
  if not workdir and (which in ('best', 'latest') or (which or '').isdigit()):
    raise errors.CheckpointError(
      f'--checkpoint={which} names a checkpoint of a workdir: pass --workdir too'
    )
  output_dir = pathlib.Path(output).expanduser()
  earlier = output_folder.earlier_outputs(output_dir) if output_dir.is_dir() else []
  paths = input_images.list_images(inputs, exclude=earlier)
  # Before the model loads: a bad --output fails at once.
  output_folder.prepare_output(
    output_dir, options.overwrite, output_folder.output_names(paths), resume=options.resume
  )
  config, variables, source, folder = model_loading.load_model(workdir, which, options.model)
  typer = cell_typing.load_typer(folder, config, variables, options.batch_size)
  if typer is None and config.typer.fit:
    logging.warning(
      '%s: its config fits a cell typer but it has none, so cells are typed by their nucleus '
      "pixels' vote. %s",
      folder,
      'Its run stopped before the fit at its end; its training command, run again, fits it.'
      if workdir and not options.model
      else f'tools/fit_cell_typer.py --model={folder} fits one.',
    )
  logging.info(
    'Segmenting %d image(s) with %s%s.',
    len(paths),
    source,
    ', cells typed by its cell typer' if typer else '',
  )
  progress = sys.stderr.isatty()  # a log file or pipe gets no bar fragments
  if options.tta is None:  # as the model was evaluated
    options = dataclasses.replace(options, tta=bool(config.eval.tta))
  try:
    return predict_files(
      config, variables, paths, options, model_source=source, progress=progress, typer=typer
    )
  except OSError as e:  # a full disk, a folder made read-only meanwhile
    raise errors.WriteError(
      f'writing to --output={output} failed ({e.strerror or e}); what was '
      f'written is listed in its {output_folder.OUTPUTS_FILE}'
    ) from None
