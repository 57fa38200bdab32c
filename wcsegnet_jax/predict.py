r"""Segments and classifies new images with a trained model; writes masks, overlays and the cells.

  python -m wcsegnet_jax.predict --output=OUT [--workdir=DIR | --model=NAME|PATH] \
      [--checkpoint=latest] [--field_scale=1.0|auto] [--pixel_size_um=0.1] [--batch_size=16] \
      [--tta] [--overwrite | --resume] [--backend=jax|onnx [--onnx_file=model.onnx] \
      [--threads=N]] IMAGE_OR_FOLDER...

Without --workdir it uses a model shipped in the package (wcsegnet_jax/pretrained/): by default
'differential' (all five white-cell types and the cytoplasm, configs/cross_lab.py, made for other
labs' stains), or --model=paper (the paper's three types), so it works right after installing.
With a workdir, the model's config is read from `DIR/config.json` (written by training), so no
--config is needed, and the checkpoint is the config's `eval.checkpoint` (the latest, as
evaluation: the best one was picked by test Dice). The model's colour step (data.color) acts on
each image as read, whole, as in training.

Inputs are image files, or folders whose images (.bmp, .png, .jpg, .jpeg, .tif, .tiff, any case;
not recursive) are all taken: point it at a folder of images only. A WBC `Dataset 1/` folder,
whose .png masks sit beside its .bmp images, is refused; give its images, `"Dataset 1"/*.bmp`.

Each image, of any size, is one cell crop: it is resized to the training size, segmented, and its
class probabilities are resized back to the original size (bilinear) before they are decoded
(eval.decode), so the mask has the original size and smooth edges. With --field_scale=F each image
is a field of many cells instead: resized by F to the training data's scale (1.0 for fields at the
Jiangxi crops' scale, 0.4 at the 300-pixel CellaVision crops', which training resized to 120),
segmented in overlapping tiles of the training size (`fields.py`), never squashed whole;
--field_scale=auto estimates F per image from the nuclei the model finds (`scale_estimate.py`;
cells.csv's field_scale column gives the scale used, for crops too). Per image it writes
`<stem>_mask.png` (class colours) and `<stem>_overlay.png` (each cell outlined in its type's
colour and numbered with its type and confidence, a legend below: `overlays.py`); a second
image with the same stem gets `<stem>_2_mask.png`, and so on; `contact_sheet.png` shows them all.

The predicted map is then split into cells (`cells.py`: one connected cell region per cell; a
neutrophil's lobes are one cell; a model without a cytoplasm class, as the paper model, has its
cells as nucleus parts within --cell_merge_gap_px of each other). `cells.csv` has one row per
cell: its image, number, bounding box (x0, y0, x1, y1 exclusive, pixels of the image), whether it
touches the image border (cut: its sizes are partial), predicted type and confidence (by the
model's cell typer where it has one, `cell_typing.py`: its calibrated probability, and review=1
below the typer's threshold, counted as 'uncertain' in the differential; else the majority of
its nucleus pixels and the mean probability of that type over them), nucleus and cell area,
N:C ratio (blank
without a cytoplasm class), nucleus measurements (see `morphometry.py`), in micrometres too
with --pixel_size_um, and the scale the image was segmented at. An image with no cell has no row
and is named on stderr and in the
summary. `differential.csv` counts the cells of each type over all images, with percentages, as
a lab's differential count; cells cut by the image border and objects too misshapen for a cell
(`cells.CellRules`) have counted=0 and the reason in cells.csv, and are counted only with
--count_all_cells; objects with a nucleus under --cell_min_nucleus_px are not listed.
`predict_outputs.json` lists the files written and the model.

OUT must be new or empty, so results of two runs never mix; --overwrite first removes what an
earlier predict wrote there (the files its `predict_outputs.json` lists) and leaves the rest.

cells.csv grows as the run goes, and `predict_outputs.json` records the images done, the model
and the options that shape the results. Ctrl-C (or SIGTERM) stops a run with one line saying how
many images were done: cells.csv and differential.csv then hold those images' cells. --resume
continues the run in OUT: the images it did are kept, not redone (an image is known by its path
as given: run the same command), the rest are segmented and the tables and contact sheet cover
all of them. It is refused, naming both values, when the run there used another model, cell
types, --tta, --field_scale, --pixel_size_um or cell rules, so one table never mixes two models;
on a new or empty OUT it is a plain run. --backend, --batch_size and --threads may change: they
change the probabilities by float rounding only (docs/export.md), so a run of one backend is
resumed by the other with the masks and rows one run would have written.

On a terminal a bar shows the images done and, for a field of many tiles, its tiles; a log file
or pipe gets no bar.

Exit status: 0 when at least one image was segmented (unreadable files, truncated ones included,
are reported on stderr, skipped and listed in the summary; a grayscale image is segmented with a
one-line warning, as the model expects colour); 1 when none was (then nothing is written); 2 for
a usage problem (no input given, no checkpoint in the workdir, a missing input path, no image
found).
"""

import pathlib
import sys

from absl import app
from absl import flags

from wcsegnet_jax.cells import cells
from wcsegnet_jax.core import config_flags
from wcsegnet_jax.core import errors
from wcsegnet_jax.core import logs
from wcsegnet_jax.inference import options as options_lib
from wcsegnet_jax.inference import output_folder
from wcsegnet_jax.inference import prediction
from wcsegnet_jax.model import shipped_model

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags; defined only when run as a command, so that importing this module
  beside `wcsegnet_jax.main` (which has --workdir and --checkpoint too) is no flag clash."""
  flags.DEFINE_string(
    'workdir',
    None,
    'Training workdir: config.json and checkpoints/. '
    'Without it, the pretrained model shipped in the package is used.',
  )
  flags.DEFINE_string('output', None, 'Folder for masks, overlays and cells.csv (created).')
  flags.DEFINE_string(
    'checkpoint',
    None,
    "'latest', 'best', a step, a checkpoint path, or "
    "'pretrained'. Default: the shipped model without --workdir; with one, "
    "its config's eval.checkpoint (latest: 'best' was picked by test Dice).",
  )
  flags.DEFINE_float(
    'pixel_size_um',
    None,
    'Micrometres per pixel of the input images; adds '
    'areas and perimeters in micrometres to cells.csv.',
  )
  flags.DEFINE_integer('batch_size', 16, 'Images per forward pass.')
  flags.DEFINE_string(
    'backend',
    'jax',
    'What runs the network: jax (XLA), or onnx (ONNX '
    'Runtime; the export extra, docs/export.md). Same outputs.',
  )
  flags.DEFINE_string(
    'onnx_file',
    None,
    "With --backend=onnx: the model's model.onnx from "
    'tools/export_model.py (default: exported in memory first).',
  )
  flags.DEFINE_integer('threads', 0, 'With --backend=onnx: ONNX Runtime threads (0: one per core).')
  flags.DEFINE_bool(
    'tta',
    None,
    'Average the predictions over the four flips (and the quarter '
    "turns where the model's config has eval.tta_rotations). Default: as the "
    "model's config (eval.tta; on for the pretrained model).",
  )
  flags.DEFINE_string(
    'field_scale',
    None,
    'Treat each image as a field of many cells: resize '
    'it by this factor to the training scale and segment it in overlapping '
    "tiles (1.0 for fields at the Jiangxi crops' scale; 0.4 at the "
    'CellaVision crops\'), or "auto": estimated per image from its nuclei '
    '(written to cells.csv). Without it, each image is one cell crop, resized '
    'whole.',
  )
  defaults = cells.CellRules()
  flags.DEFINE_float(
    'cell_merge_gap_px',
    defaults.merge_gap_px,
    'Nucleus parts at most this '
    "far apart (pixels at the training scale) are one cell: a neutrophil's "
    'lobes. See wcsegnet_jax/cells/cells.py.',
  )
  flags.DEFINE_float(
    'cell_split_radius_px',
    defaults.split_radius_px,
    'A cell region holding '
    'two nucleus parts this deep (pixels from the nucleus edge, at the training '
    'scale) is split in two touching cells; 0 never splits.',
  )
  flags.DEFINE_float(
    'cell_min_nucleus_px',
    defaults.min_nucleus_px,
    'Cells with a smaller nucleus (pixels at the training scale) are dropped as specks.',
  )
  flags.DEFINE_float(
    'cell_max_cytoplasm_px',
    defaults.max_cytoplasm_px,
    "A cell's cytoplasm reaches at most this far from its nucleus (pixels at the training "
    'scale); farther cytoplasm-coloured pixels are left out of every cell.',
  )
  flags.DEFINE_bool(
    'overwrite',
    False,
    'Allow an --output folder that holds files: the '
    'results an earlier predict wrote there are removed first.',
  )
  flags.DEFINE_bool(
    'resume',
    False,
    'Continue the run in --output (one stopped by Ctrl-C): '
    'the images it did are kept, not redone; refused if it used another model '
    'or other options.',
  )
  flags.DEFINE_string(
    'model',
    None,
    'A shipped model by name (%s; default %s) or a model '
    'folder (tools/build_pretrained.py --output), instead of --workdir.'
    % (', '.join(shipped_model.MODEL_NAMES), shipped_model.DEFAULT_MODEL),
  )
  flags.DEFINE_bool(
    'count_all_cells',
    False,
    'Count in differential.csv the cells cut by the '
    'image border and the objects too small or misshapen for a cell as well '
    '(cells.csv lists them either way, with the reason).',
  )


def options_from_flags() -> options_lib.PredictOptions:
  """The flags as `PredictOptions`, checked: a bad value is one line naming the flag (exit 2)."""
  if not FLAGS.output:
    raise errors.UsageError('--output is required: the folder for masks, overlays and cells.csv')
  rules = cells.CellRules(
    FLAGS.cell_merge_gap_px,
    FLAGS.cell_split_radius_px,
    FLAGS.cell_min_nucleus_px,
    FLAGS.cell_max_cytoplasm_px,
    count_excluded=FLAGS.count_all_cells,
  )
  return options_lib.PredictOptions(
    output=FLAGS.output,
    workdir=FLAGS.workdir,
    checkpoint=FLAGS.checkpoint,
    model=FLAGS.model,
    batch_size=FLAGS.batch_size,
    tta=FLAGS.tta,
    pixel_size_um=FLAGS.pixel_size_um,
    field_scale=FLAGS.field_scale,
    cell_rules=rules,
    overwrite=FLAGS.overwrite,
    backend=FLAGS.backend,
    onnx_file=FLAGS.onnx_file,
    threads=FLAGS.threads,
    resume=FLAGS.resume,
  ).checked()


def main(argv):
  inputs = argv[1:]
  with errors.user_errors_as_messages():
    options = options_from_flags()
    if not inputs:
      raise errors.UsageError('give at least one image file or folder (see --help)')
    logs.quiet_library_logs()
    errors.terminate_as_interrupt()  # a scheduler's stop keeps the tables, as Ctrl-C does
    summary = prediction.run(inputs, options)
  print(summary.text())
  if not summary.done:
    print('nothing segmented, nothing written', file=sys.stderr)
    sys.exit(1)
  output = pathlib.Path(options.output)
  print(
    f'wrote masks and overlays, {output / output_folder.CELLS_FILE}, '
    f'{output / output_folder.DIFFERENTIAL_FILE} and '
    f'{output / output_folder.CONTACT_SHEET_FILE} (every overlay, small, for review)'
  )


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=config_flags.parse_flags)
