"""Ablation: the plain U-Net with ReLU (Table 1, first row)."""

from configs import base


def get_config():
  config = base.get_config()
  config.name = 'unet_relu'
  config.model.residual = False
  config.model.activation = 'relu'
  return config
