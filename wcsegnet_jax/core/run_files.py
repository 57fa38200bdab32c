"""The files a training run leaves in its workdir beside its checkpoints, and their readers:
`config.json` (the resolved config), `data.json` (the ids of every dataset's train and test
images), `classes.json` (the class table the checkpoints output, `check_classes_record`) and
`metrics.jsonl` (one JSON object per log line). Training writes them; evaluation,
prediction, curves and summaries read them.
"""

import json
import pathlib
from typing import Sequence

import ml_collections

from wcsegnet_jax.core import errors
from wcsegnet_jax.core import files

CONFIG_FILE = 'config.json'
DATA_FILE = 'data.json'  # the images a run started on (input_pipeline.data_record)
METRICS_FILE = 'metrics.jsonl'
# The class of each output channel, as training wrote it: config.json can be edited, and its
# data.cell_types reordered would relabel every pixel without changing any array's shape.
CLASSES_FILE = 'classes.json'


def load_saved_config(workdir: pathlib.Path) -> dict | None:
  """The config a workdir was trained with (its config.json), or None."""
  path = pathlib.Path(workdir) / CONFIG_FILE
  return json.loads(path.read_text()) if path.exists() else None


def write_data_record(workdir: pathlib.Path, record: dict) -> None:
  files.write_json_atomic(pathlib.Path(workdir) / DATA_FILE, record)


def write_config(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> None:
  """Saves the resolved config as JSON (atomically: write then rename)."""
  files.write_text_atomic(workdir / CONFIG_FILE, config.to_json(indent=2, sort_keys=True))


def write_classes_record(workdir: pathlib.Path, names: Sequence[str]) -> None:
  files.write_json_atomic(pathlib.Path(workdir) / CLASSES_FILE, {'classes': list(names)})


def check_classes_record(workdir: pathlib.Path, names: Sequence[str]) -> None:
  """The class names a workdir's config gives (`ClassTable.names`) must be those its
  checkpoints were trained with (CLASSES_FILE; a workdir of an older version has none): a
  CheckpointError naming both orders otherwise."""
  path = pathlib.Path(workdir) / CLASSES_FILE
  if not path.is_file():
    return
  try:
    recorded = json.loads(path.read_text())['classes']
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise errors.CheckpointError(
      f'{path}: unreadable ({e}); it records the classes the checkpoints there output'
    ) from None
  if list(recorded) != list(names):
    raise errors.CheckpointError(
      f'{path}: the checkpoints there output the classes {", ".join(recorded)}, but '
      f'{pathlib.Path(workdir) / CONFIG_FILE} gives {", ".join(names)}: its data.cell_types '
      f'(or data.cytoplasm) changed after training; restore them in the recorded order'
    )


def read_metrics(workdir: str | pathlib.Path) -> list[dict]:
  """The JSON-lines records of a workdir (for curves, summaries and tests). A line that is not
  a whole JSON object, as the partial last line a killed run leaves, is skipped."""
  records = []
  for line in (pathlib.Path(workdir) / METRICS_FILE).read_text().splitlines():
    try:
      record = json.loads(line)
    except ValueError:
      continue
    if isinstance(record, dict):
      records.append(record)
  return records
