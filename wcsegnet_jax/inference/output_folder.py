"""predict's output folder: new or empty, or holding only what an earlier predict wrote (listed in
its OUTPUTS_FILE, which --overwrite removes first), so two runs' results never mix; and the file
names each image's outputs take."""

import json
import os
import pathlib
from typing import Sequence

from wcsegnet_jax.core import errors

DataError = errors.DataError
CELLS_FILE = 'cells.csv'
DIFFERENTIAL_FILE = 'differential.csv'
CONTACT_SHEET_FILE = 'contact_sheet.png'   # every image's overlay, small, for review
OUTPUTS_FILE = 'predict_outputs.json'   # what a run wrote, so --overwrite removes only that


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
    raise DataError(f'{listing}: not a readable list of earlier outputs ({e}); remove '
                        f'the folder by hand or choose another --output') from None
  safe = [n for n in names if isinstance(n, str) and n and pathlib.Path(n).name == n]
  return [output / n for n in safe + [CELLS_FILE, DIFFERENTIAL_FILE, CONTACT_SHEET_FILE,
                                      OUTPUTS_FILE]]


def output_names(paths: Sequence[pathlib.Path]) -> list[str]:
  """The files a run on `paths` writes (the stems as `predict_files` gives them)."""
  used = set()
  stems = [_unique_stem(path, used) for path in paths]
  return [name for stem in stems for name in image_output_names(stem)] + [
      CELLS_FILE, DIFFERENTIAL_FILE, CONTACT_SHEET_FILE, OUTPUTS_FILE]


def prepare_output(output: str | pathlib.Path, overwrite: bool,
                   planned: Sequence[str] = ()) -> pathlib.Path:
  """The output folder, created; one holding files is refused unless `overwrite`, which first
  removes what an earlier predict wrote there, so two runs' results never mix, and refuses to
  replace any other file of the `planned` names (the user's, not ours)."""
  output = pathlib.Path(output).expanduser()
  if output.exists() and not output.is_dir():
    raise DataError(f'--output={output} is a file, not a folder')
  if (above := next((p for p in output.parents if p.exists()), None)) and not above.is_dir():
    raise DataError(f'--output={output} runs through {above}, a file, not a folder')
  present = sorted(p.name for p in output.iterdir()) if output.is_dir() else []
  if present and not overwrite:
    shown = ', '.join(present[:3]) + (', ...' if len(present) > 3 else '')
    raise DataError(
        f'--output={output} already holds {len(present)} files ({shown}); give a new or empty '
        f'folder, or --overwrite to replace the results of an earlier predict there')
  earlier = {p.name for p in earlier_outputs(output)} if present else set()
  theirs = [name for name in planned if (output / name).exists() and name not in earlier]
  if theirs:   # checked before anything is removed: a refusal leaves the folder as it was
    raise DataError(
        f'--output={output} holds {", ".join(theirs[:3])}, which no earlier predict wrote and '
        f'this one would replace; move it away or choose another --output')
  try:
    for name in earlier:
      (output / name).unlink(missing_ok=True)
    output.mkdir(parents=True, exist_ok=True)
    probe = output / f'.write_test.{os.getpid()}'   # a read-only mount passes os.access
    probe.write_bytes(b'')
    probe.unlink()
  except OSError as e:
    raise errors.WriteError(f'--output={output} cannot be written ({e.strerror or e}); choose '
                            f'another folder') from None
  return output


# File names hold 255 bytes: an output's temporary name (files.py) adds '.', '.<pid>.tmp'.
MAX_STEM_BYTES = 255 - len('._99999_overlay.png.9999999.tmp')


def _unique_stem(path: pathlib.Path, used: set[str]) -> str:
  """The stem of an image's outputs: its own, as valid UTF-8 (a byte of another encoding
  becomes '_'), numbered when another image has it."""
  own = path.stem.encode('utf-8', 'surrogateescape').decode('utf-8', 'replace').replace(
      '\ufffd', '_')
  # Shortened to fit the file system with its suffixes (cells.csv links image and outputs).
  own = own.encode('utf-8')[:MAX_STEM_BYTES].decode('utf-8', 'ignore')
  stem, k = own, 2
  while stem in used:
    stem, k = f'{own}_{k}', k + 1
  used.add(stem)
  return stem
