"""A tiny net and a few steps: the whole path (data, train, eval, checkpoint) on a CPU."""

from configs import base


def get_config():
  config = base.get_config()
  config.name = 'smoke'
  config.model.base_width = 4
  config.model.num_levels = 2
  config.model.blocks_per_stage = 1
  config.data.image_size = 64
  config.augment.augment_repeats = 1
  config.train.batch_size = 8
  config.train.num_epochs = 2
  config.train.learning_rate = 1e-3  # a tiny net in two epochs needs a bolder step
  config.train.log_every_steps = 10
  config.eval.batch_size = 16
  return config
