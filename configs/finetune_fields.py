"""Fine-tune the shipped five-type model on a lab's own typed cells: whole fields and a
truth.csv of each white cell's type and box, no masks (the layout of wcsegnet_jax/data/
typed_fields.py).

  python -m wcsegnet_jax.main --config=configs/finetune_fields.py --workdir=runs/my_lab \
      --config.data.fields_dir=/path/to/my_lab
  python -m wcsegnet_jax.predict --workdir=runs/my_lab --field_scale=auto --output=out/ fields/

The shipped model labels each typed cell's pixels (its nucleus and cytoplasm inside the box take
the lab's type: wcsegnet_jax/training/field_crops.py), then training starts from it on crops
around those
cells, with its colour step and augmentation. What differs from the shipped model's config:
- train.init_from 'pretrained:differential' and data.fields_dir, the lab's folder;
- a short schedule (10 epochs, Adam 1e-3 with cosine decay after half an epoch of warm-up): the
  model already segments; it learns the lab's colours and typing (6 epochs at 5e-4 moved one
  cross-validation fold's typing only 0.64 -> 0.68);
- every crop 6 times per epoch, and all of them (no test split).
Measured by 5-fold cross-validation on bccd_fields (tools/cross_lab.py finetune_cv;
docs/results.md, "Other labs' smears", 2026-12-06): 98.5% of white cells found, 67.6% typed right
(62% before; eosinophils learnt, a third of neutrophils then called eosinophil); ~6 minutes on
2 cores for ~110 fields.
"""

from wcsegnet_jax.model import shipped_model


MODEL = 'differential'   # the shipped five-type model, made for other labs' smears


def get_config():
  config = shipped_model.load_config(shipped_model.model_dir(MODEL))
  config.name = 'finetune_fields'
  config.train.init_from = f'pretrained:{MODEL}'
  config.data.fields_dir = ''   # the lab's folder, given on the command line
  config.data.fields_scale = 0.0   # estimated per field
  # Every typed cell trains: a lab's few eosinophils and monocytes are too precious for a test
  # split (tools/cross_lab.py finetune_cv measures on held-out fields instead).
  config.data.test_fraction = 0.0
  t = config.train
  t.num_epochs = 10
  t.learning_rate = 1e-3
  t.lr_schedule = 'cosine'
  t.warmup_epochs = 0.5
  t.log_every_steps = 20
  config.augment.augment_repeats = 6
  return config
