"""Atomic file writes: a temporary file in the same folder, then a rename.

A crash, a kill or a full disk leaves the previous file or none, never half of a new one.
"""

import csv
import io
import json
import os
import pathlib
from typing import Any, Sequence


def write_bytes_atomic(path: str | pathlib.Path, data: bytes) -> None:
  """Writes `data` to `path` through a temporary file in the same folder and a rename."""
  path = pathlib.Path(path)
  tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
  try:
    with open(tmp, 'wb') as f:
      f.write(data)
    os.replace(tmp, path)
  finally:
    if tmp.exists():
      tmp.unlink()


def write_text_atomic(path: str | pathlib.Path, text: str) -> None:
  write_bytes_atomic(path, text.encode('utf-8'))


def write_json_atomic(path: str | pathlib.Path, obj: Any) -> None:
  write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + '\n')


def write_csv_atomic(path: str | pathlib.Path, header: Sequence[str], rows) -> None:
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator='\n')
  writer.writerow(header)
  writer.writerows(rows)
  write_text_atomic(path, buffer.getvalue())
