"""Ablation: the plain U-Net with LeakyReLU (Table 1, second row)."""

from configs import base


def get_config():
  config = base.get_config()
  config.name = 'unet_leakyrelu'
  config.model.residual = False
  return config
