"""The smallest meaningful CPU version of the Table 1 experiment (no GPU needed).

  python -m wcsegnet_jax.main --config=configs/cpu_small.py:wcseg --workdir=runs/cpu_wcseg

The argument after ':' picks the network: wcseg | unet_relu | unet_leakyrelu. A narrow net
(base width 8: 1.0M parameters instead of 63.9M) on 64x64 images for a few epochs, with a
learning rate raised to 1e-3 so that it learns in that time. Its figures say whether the
pipeline learns, not how the paper's network scores.
"""

import importlib


def get_config(network: str = 'wcseg'):
  config = importlib.import_module(f'configs.{network}').get_config()
  config.name = f'cpu_small_{network}'
  config.model.base_width = 8
  config.data.image_size = 64
  config.augment.augment_repeats = 2
  config.train.num_epochs = 12
  config.train.learning_rate = 1e-3
  config.train.log_every_steps = 10
  return config
