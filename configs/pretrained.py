"""The config of the model shipped in the package (wcsegnet_jax/pretrained/), for evaluating it.

  python -m wcsegnet_jax.main --config=configs/pretrained.py --mode=evaluate \
      --workdir=runs/pretrained_eval --config.eval.raw_dir=/path/to/folder

It is configs/cpu.py as it was when the model was built (tools/build_pretrained.py); the eval
section and data paths may be overridden, the model keys must stay as they are.
"""

from wcsegnet_jax import shipped_model


def get_config():
  config = shipped_model.load_config()
  config.eval.checkpoint = 'pretrained'   # this config only fits the shipped weights
  return config
