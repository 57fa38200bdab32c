"""The config of a model shipped in the package (wcsegnet_jax/pretrained/), for evaluating it.

  python -m wcsegnet_jax.main --config=configs/pretrained.py --mode=evaluate \
      --workdir=runs/pretrained_eval --config.eval.raw_dir=/path/to/folder
  # the paper's three-type model instead of the default five-type one:
  python -m wcsegnet_jax.main --config=configs/pretrained.py:paper --mode=evaluate ...

It is the config the model was built with (tools/build_pretrained.py): configs/cross_lab.py for
the default 'differential', configs/cpu.py for 'paper'. The eval section and data paths may be
overridden, the model keys must stay as they are.
"""

from wcsegnet_jax.model import shipped_model


def get_config(name: str | None = None):
  config = shipped_model.load_config(shipped_model.model_dir(name))
  # This config only fits the shipped weights.
  config.eval.checkpoint = 'pretrained' if name is None else f'pretrained:{name}'
  return config
