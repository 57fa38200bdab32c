"""WCSegNet as in the paper: residual Conv-Blocks with LeakyReLU (Table 1, last row)."""

from configs import base


def get_config():
  return base.get_config()
