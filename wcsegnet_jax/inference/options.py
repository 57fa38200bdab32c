"""predict's options: what the command's flags ask, checked once before anything loads (a bad
value is a usage error naming the flag) and passed whole to `prediction.run`."""

import dataclasses
import math
import pathlib

from wcsegnet_jax.cells import cells
from wcsegnet_jax.core import errors

AUTO_SCALE = 'auto'  # --field_scale=auto: each field's scale estimated from its nuclei
BACKENDS = ('jax', 'onnx')  # --backend: XLA, or ONNX Runtime (the export extra, docs/export.md)
MAX_PIXEL_SIZE_UM = 1000.0  # a millimetre per pixel: larger ones are typing slips (and overflow)


@dataclasses.dataclass(frozen=True)
class PredictOptions:
  """Where predict writes, which model it uses and how it reads the images (the flags'
  meaning: `wcsegnet_jax/predict.py`)."""

  output: str | pathlib.Path
  workdir: str | None = None  # a training workdir: its config.json and checkpoints
  checkpoint: str | None = None  # 'latest', 'best', a step, a path, 'pretrained[:NAME]'
  model: str | None = None  # a shipped model by name, or a model folder
  batch_size: int = 16
  tta: bool | None = None  # None: as the model was evaluated (its config's eval.tta)
  pixel_size_um: float | None = None
  field_scale: float | str | None = None  # None: each image one crop; a number or AUTO_SCALE
  cell_rules: cells.CellRules = cells.CellRules()
  overwrite: bool = False
  backend: str = 'jax'  # what runs the network: 'jax' (XLA) or 'onnx' (ONNX Runtime)
  onnx_file: str | None = None  # with backend 'onnx': an exported model.onnx
  threads: int = 0  # with backend 'onnx': ONNX Runtime threads (0: one per core)
  resume: bool = False  # continue the run in `output`, without redoing images done

  def checked(self) -> 'PredictOptions':
    """These options with --field_scale parsed (None, a number or AUTO_SCALE); a UsageError
    naming the flag for a value that cannot be meant."""
    if self.backend not in BACKENDS:
      raise errors.UsageError(f'--backend={self.backend}: expected one of {BACKENDS}')
    if self.threads < 0:
      raise errors.UsageError(f'--threads={self.threads} must be >= 0 (0: one per core)')
    if self.resume and self.overwrite:
      raise errors.UsageError(
        '--resume continues the run in --output and --overwrite replaces it: give one of them'
      )
    if self.batch_size < 1:
      raise errors.UsageError(f'--batch_size={self.batch_size} must be >= 1')
    if self.pixel_size_um is not None and not (
      math.isfinite(self.pixel_size_um) and 0 < self.pixel_size_um <= MAX_PIXEL_SIZE_UM
    ):
      raise errors.UsageError(
        f'--pixel_size_um={self.pixel_size_um} must be a positive number of micrometres per '
        f'pixel, at most {MAX_PIXEL_SIZE_UM:g} (a smear under a microscope has 0.05 to 1)'
      )
    for name, value in dataclasses.asdict(self.cell_rules).items():
      if not (math.isfinite(value) and value >= 0):
        raise errors.UsageError(f'--cell_{name}={value} must be a number >= 0')
    return dataclasses.replace(self, field_scale=parse_field_scale(self.field_scale))


def parse_field_scale(value: float | str | None) -> float | str | None:
  """--field_scale as given: None (crops), AUTO_SCALE, or a positive number."""
  if value is None or str(value).strip().lower() == AUTO_SCALE:
    return None if value is None else AUTO_SCALE
  try:
    scale = float(value)
  except ValueError:
    scale = math.nan
  if not (math.isfinite(scale) and scale > 0):
    raise errors.UsageError(
      f'--field_scale={value} must be a positive number (e.g. 1.0 for '
      f"fields at the training crops' scale) or {AUTO_SCALE}"
    )
  return scale
