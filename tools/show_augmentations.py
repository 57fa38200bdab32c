"""Writes a grid like the paper's Figure 2: each augmentation alone, then all together.

  python tools/show_augmentations.py --config=configs/wcseg.py --output=augmentations.png \
      [--num_images=3] [--dataset=jiangxi]

Rows are training images; columns: original, rotation, width shift, height shift, shear, zoom,
flip (each at the edge of its configured range), then one random draw of all together. Nucleus
pixels are overlaid in the class colours (red neutrophil, green basophil, blue lymphocyte).
"""

from absl import app
from absl import flags
import ml_collections
import numpy as np

from wcsegnet_jax.core import classes
from wcsegnet_jax.core import config_flags
from wcsegnet_jax.core import errors
from wcsegnet_jax.core import files
from wcsegnet_jax.data import augment
from wcsegnet_jax.data import image_files
from wcsegnet_jax.data import input_pipeline

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags; defined only when run as a command, so that tests can import the
  grid functions beside other modules that define --config or --output."""
  config_flags.define_config_file('config', 'configs/wcseg.py', 'Config file.')
  flags.DEFINE_string('output', 'augmentations.png', 'PNG file to write.')
  flags.DEFINE_integer('num_images', 3, 'Rows of the grid.')
  flags.DEFINE_string('dataset', '', 'Dataset to draw from (default: the first configured).')
  flags.DEFINE_integer('seed', 0, 'Seed of the "all together" draws.')


def one_at_a_time(
  aug: ml_collections.ConfigDict, height: int, width: int
) -> list[tuple[str, augment.AffineParams]]:
  """Each augmentation alone at the edge of its configured range (the grid's columns)."""
  return [
    ('original', augment.AffineParams()),
    ('rotation', augment.AffineParams(rotation_deg=aug.rotation_deg)),
    ('width shift', augment.AffineParams(shift_x_px=aug.width_shift * width)),
    ('height shift', augment.AffineParams(shift_y_px=aug.height_shift * height)),
    ('shear', augment.AffineParams(shear_deg=aug.shear_deg)),
    ('zoom', augment.AffineParams(zoom_x=1 - aug.zoom, zoom_y=1 + aug.zoom)),
    ('flip', augment.AffineParams(flip=aug.horizontal_flip)),
  ]


def figure_grid(
  examples: list[dict],
  aug: ml_collections.ConfigDict,
  rng: np.random.Generator,
  gap: int = 4,
  table: classes.ClassTable = classes.PAPER_TABLE,
) -> tuple[list[str], np.ndarray]:
  """Column names and an RGB grid: one row per example, masks overlaid in `table`'s colours."""
  rows, names = [], []
  for example in examples:
    h, w = example['label_map'].shape
    columns = one_at_a_time(aug, h, w) + [('all', augment.sample_params(rng, aug, h, w))]
    names = [name for name, _ in columns]
    tiles = []
    for _, params in columns:
      image, labels = augment.warp_pair(
        example['image'],
        example['label_map'],
        augment.inverse_affine_matrix(params, h, w),
        aug.fill_mode,
      )
      tiles.append(table.overlay(image, labels))
    rows.append(_tile(tiles, gap, axis=1))
  return names, _tile(rows, gap, axis=0)


def _tile(images: list[np.ndarray], gap: int, axis: int) -> np.ndarray:
  """Concatenates images along `axis` with white gaps."""
  shape = list(images[0].shape)
  shape[axis] = gap
  spacer = np.full(shape, 255, np.uint8)
  parts = [p for image in images for p in (image, spacer)][:-1]
  return np.concatenate(parts, axis=axis)


def main(argv):
  del argv
  with errors.user_errors_as_messages():
    config = FLAGS.config
    if FLAGS.dataset:
      config.data.datasets = (FLAGS.dataset,)
    source = input_pipeline.load_datasets(config.data)[0].train
    examples = [source[i] for i in range(min(FLAGS.num_images, len(source)))]
    names, grid = figure_grid(
      examples,
      config.augment,
      np.random.default_rng(FLAGS.seed),
      table=classes.table_of(config.data),
    )
    files.write_bytes_atomic(FLAGS.output, image_files.encode_png(grid))
    print(
      f'wrote {FLAGS.output}: {len(examples)} images x {len(names)} columns ({", ".join(names)})'
    )


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=config_flags.parse_flags)
