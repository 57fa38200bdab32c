"""WCSegNet plus what the field knows helps (the 'past the paper' candidate of docs/results.md).

Dice + cross-entropy (the Dice term balances the small nucleus against the background), class
weights for the rare basophils, cosine decay with warm-up, bfloat16 compute with a larger batch,
longer training, and flip test-time augmentation at evaluation. Which of these help is measured
on a GPU (docs/results.md); until then this config is a candidate, not the default.
"""

from configs import base


def get_config():
  config = base.get_config()
  config.name = 'wcseg_plus'
  config.model.dtype = 'bfloat16'
  config.train.batch_size = 64
  config.train.learning_rate = 4e-4  # sqrt scaling from 1e-4 at batch 16
  config.train.lr_schedule = 'cosine'
  config.train.warmup_epochs = 2.0
  config.train.num_epochs = 150
  config.train.loss = 'dice_ce'
  config.train.class_weights = (1.0, 1.0, 4.0, 1.0)  # background, neutro, baso, lympho
  config.eval.tta = True
  return config
