"""predict's output folder: new or empty, or holding only what an earlier predict wrote (listed in
its OUTPUTS_FILE, which --overwrite removes first, and --resume continues), so two runs' results
never mix; and the file names each image's outputs take.

OUTPUTS_FILE records the run as it goes: the model and the settings that shape its results
(`run_settings`), the files written (each batch's listed before they are written) and the images
done (`done`: each image's input as shown, its outputs' stem and its number of cells, after its
rows are in CELLS_FILE), and whether the run completed.
"""

import json
import os
import pathlib
from typing import Sequence

from wcsegnet_jax.core import errors

DataError = errors.DataError
CELLS_FILE = 'cells.csv'
DIFFERENTIAL_FILE = 'differential.csv'
CONTACT_SHEET_FILE = 'contact_sheet.png'  # every image's overlay, small, for review
OUTPUTS_FILE = 'predict_outputs.json'  # what a run wrote, so --overwrite removes only that


def image_output_names(stem: str) -> tuple[str, str]:
  """The mask and overlay file names of one image."""
  return f'{stem}_mask.png', f'{stem}_overlay.png'


def earlier_outputs(output: pathlib.Path) -> list[pathlib.Path]:
  """The files an earlier predict listed in `output`'s OUTPUTS_FILE (plain names only)."""
  listing = output / OUTPUTS_FILE
  if not listing.is_file():
    return []
  try:
    names = json.loads(listing.read_text())['files']
  except (ValueError, KeyError, TypeError) as e:
    raise DataError(
      f'{listing}: not a readable list of earlier outputs ({e}); remove '
      f'the folder by hand or choose another --output'
    ) from None
  safe = [n for n in names if isinstance(n, str) and n and pathlib.Path(n).name == n]
  return [
    output / n for n in safe + [CELLS_FILE, DIFFERENTIAL_FILE, CONTACT_SHEET_FILE, OUTPUTS_FILE]
  ]


def run_settings(
  model: str, cell_types: Sequence[str], tta: bool, field_scale, pixel_size_um, cell_rules: dict
) -> dict:
  """What makes two runs' rows comparable: the model, the types it tells apart, and the options
  that change masks or cells.csv. A resumed run must have every one of them as the earlier.
  What runs the network (--backend) is not one: both give the same masks and rows."""
  return {
    'model': model,
    'cell_types': list(cell_types),
    'tta': bool(tta),
    'field_scale': None if field_scale is None else str(field_scale),
    'pixel_size_um': pixel_size_um,
    'cell_rules': dict(cell_rules),
  }


def resumable_run(output: pathlib.Path, settings: dict) -> dict | None:
  """The OUTPUTS_FILE record of the run in `output` to continue (None: the folder holds none,
  so a resumed run starts anew); a DataError naming both values when it was made with another
  model or other settings, so rows of two models never mix."""
  listing_path = output / OUTPUTS_FILE
  if not listing_path.is_file():
    return None
  try:
    listing = json.loads(listing_path.read_text())
    done = listing['done']
    if not all(isinstance(d, dict) and {'file', 'stem'} <= set(d) for d in done):
      raise ValueError('its "done" entries are not images')
  except (ValueError, KeyError, TypeError) as e:
    raise DataError(
      f'{listing_path}: no record of the images done ({e}); it cannot be resumed: '
      f'use --overwrite to start again there, or choose another --output'
    ) from None
  for key, value in settings.items():
    if listing.get(key) != value:
      raise DataError(
        f'{listing_path}: the run there has {key}={listing.get(key)!r}, this one '
        f'{key}={value!r}; --resume continues a run with the same model and options only: '
        f'give those, or --overwrite to replace it, or another --output'
      )
  return listing


def output_names(paths: Sequence[pathlib.Path]) -> list[str]:
  """The files a run on `paths` writes (the stems as `predict_files` gives them)."""
  used = set()
  stems = [_unique_stem(path, used) for path in paths]
  return [name for stem in stems for name in image_output_names(stem)] + [
    CELLS_FILE,
    DIFFERENTIAL_FILE,
    CONTACT_SHEET_FILE,
    OUTPUTS_FILE,
  ]


def prepare_output(
  output: str | pathlib.Path, overwrite: bool, planned: Sequence[str] = (), resume: bool = False
) -> pathlib.Path:
  """The output folder, created; one holding files is refused unless `overwrite`, which first
  removes what an earlier predict wrote there, so two runs' results never mix, or `resume`,
  which keeps them to continue that run (`resumable_run` checks it is the same model's); either
  refuses to replace any other file of the `planned` names (the user's, not ours)."""
  output = pathlib.Path(output).expanduser()
  if output.exists() and not output.is_dir():
    raise DataError(f'--output={output} is a file, not a folder')
  if (above := next((p for p in output.parents if p.exists()), None)) and not above.is_dir():
    raise DataError(f'--output={output} runs through {above}, a file, not a folder')
  present = sorted(p.name for p in output.iterdir()) if output.is_dir() else []
  if present and resume and not (output / OUTPUTS_FILE).is_file():
    raise DataError(
      f'--output={output} holds files but no {OUTPUTS_FILE}: no earlier predict '
      f'to resume there; give a new or empty folder'
    )
  if present and not (overwrite or resume):
    shown = ', '.join(present[:3]) + (', ...' if len(present) > 3 else '')
    raise DataError(
      f'--output={output} already holds {len(present)} files ({shown}); give a new or empty '
      f'folder, --resume to continue an interrupted predict there, or --overwrite to replace '
      f'its results'
    )
  earlier = {p.name for p in earlier_outputs(output)} if present else set()
  theirs = [name for name in planned if (output / name).exists() and name not in earlier]
  if theirs:  # checked before anything is removed: a refusal leaves the folder as it was
    raise DataError(
      f'--output={output} holds {", ".join(theirs[:3])}, which no earlier predict wrote and '
      f'this one would replace; move it away or choose another --output'
    )
  try:
    for name in () if resume else earlier:
      (output / name).unlink(missing_ok=True)
    output.mkdir(parents=True, exist_ok=True)
    probe = output / f'.write_test.{os.getpid()}'  # a read-only mount passes os.access
    probe.write_bytes(b'')
    probe.unlink()
  except OSError as e:
    raise errors.WriteError(
      f'--output={output} cannot be written ({e.strerror or e}); choose another folder'
    ) from None
  return output


# File names hold 255 bytes: an output's temporary name (files.py) adds '.', '.<pid>.tmp'.
MAX_STEM_BYTES = 255 - len('._99999_overlay.png.9999999.tmp')


def _unique_stem(path: pathlib.Path, used: set[str]) -> str:
  """The stem of an image's outputs: its own, as valid UTF-8 (a byte of another encoding
  becomes '_'), numbered when another image has it."""
  own = (
    path.stem.encode('utf-8', 'surrogateescape').decode('utf-8', 'replace').replace('\ufffd', '_')
  )
  # Shortened to fit the file system with its suffixes (cells.csv links image and outputs).
  own = own.encode('utf-8')[:MAX_STEM_BYTES].decode('utf-8', 'ignore')
  stem, k = own, 2
  while stem in used:
    stem, k = f'{own}_{k}', k + 1
  used.add(stem)
  return stem
