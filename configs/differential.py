"""The five-part differential with whole cells: all five white-cell types and the cytoplasm.

  python -m wcsegnet_jax.main --config=configs/differential.py --workdir=runs/differential

Past the paper (which keeps neutrophils, basophils and lymphocytes and drops the cytoplasm):
the label map is 0 background, 1 neutrophil, 2 lymphocyte, 3 monocyte, 4 eosinophil,
5 basophil (nucleus pixels take their cell's type), 6 cytoplasm, so the model segments whole
cells and types them. Everything else is the CPU recipe (configs/cpu.py): minutes on 2 cores.

What differs from configs/cpu.py and why:
- data.cell_types: the five types, in the order of the dataset's CSV codes (1-5).
- data.cytoplasm True: whole-cell Dice and IoU join the nucleus metrics.
- 14 epochs instead of 16: the five types give ~1.5x the training images per epoch, and the
  run stays inside ~15 minutes on 2 cores.
Measured figures (3 seeds) are in docs/results.md, "The five-part differential".
"""

from configs import cpu


def get_config():
  config = cpu.get_config()
  config.name = 'differential'
  config.data.cell_types = ('neutrophil', 'lymphocyte', 'monocyte', 'eosinophil', 'basophil')
  config.data.cytoplasm = True
  config.train.num_epochs = 14
  return config
