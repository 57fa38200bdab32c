"""Writes a grid like the paper's Figure 2: each augmentation alone, then all together.

  python tools/show_augmentations.py --config=configs/wcseg.py --output=augmentations.png \
      [--num_images=3] [--dataset=jiangxi]

Rows are training images; columns: original, rotation, width shift, height shift, shear, zoom,
flip (each at the edge of its configured range), then one random draw of all together. Nucleus
pixels are overlaid in the class colours (red neutrophil, green basophil, blue lymphocyte).
"""

from absl import app
from absl import flags
import numpy as np

from wcsegnet_jax import augment
from wcsegnet_jax import config_lib
from wcsegnet_jax import errors
from wcsegnet_jax import input_pipeline

FLAGS = flags.FLAGS
config_lib.define_config_file('config', 'configs/wcseg.py', 'Config file.')
flags.DEFINE_string('output', 'augmentations.png', 'PNG file to write.')
flags.DEFINE_integer('num_images', 3, 'Rows of the grid.')
flags.DEFINE_string('dataset', '', 'Dataset to draw from (default: the first configured).')
flags.DEFINE_integer('seed', 0, 'Seed of the "all together" draws.')


def main(argv):
  del argv
  with errors.user_errors_as_messages():
    config = FLAGS.config
    if FLAGS.dataset:
      config.data.datasets = (FLAGS.dataset,)
    source = input_pipeline.load_datasets(config.data)[0].train
    examples = [source[i] for i in range(min(FLAGS.num_images, len(source)))]
    names, grid = augment.figure_grid(examples, config.augment, np.random.default_rng(FLAGS.seed))
    augment.write_png(FLAGS.output, grid)
    print(f'wrote {FLAGS.output}: {len(examples)} images x {len(names)} columns '
          f'({", ".join(names)})')


if __name__ == '__main__':
  app.run(main, flags_parser=config_lib.parse_flags)
