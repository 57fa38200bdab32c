"""Adapt the shipped five-type model to a lab's own typed cells: whole fields and a truth.csv of
each white cell's type and box, no masks (the layout of wcsegnet_jax/data/typed_fields.py).

  python -m wcsegnet_jax.main --config=configs/finetune_fields.py --workdir=runs/my_lab \
      --config.data.fields_dir=/path/to/my_lab
  python -m wcsegnet_jax.predict --workdir=runs/my_lab --field_scale=auto --output=out/ fields/

The network is kept as shipped (it finds other labs' white cells already: 99% on bccd_fields);
what learns the lab's cells is its cell typer (wcsegnet_jax/cells/cell_typing.py): a linear
classifier
over the network's features pooled over each cell, fitted on the WBC Image Dataset's training
cells and the lab's typed cells together, each of the lab's weighing 20 training crops. A lab's
cell is cut around the model's cell in its box at the field's estimated scale. What differs
from the shipped model's config:
- train.init_from 'pretrained:differential', train.num_epochs 0 (the network is not trained:
  fine-tuning it on pseudo-labelled crops typed 68% right by cross-validation and found fewer
  cells, measured with the earlier colour step 'reinhard'), typer.fit True and
  data.fields_dir, the lab's folder;
- typer.crop_color 'field': fitted on the lab's cells, the colour step on the whole field types
  better than on each crop (cross-validated 0.87 against 0.81 on bccd_fields' features, with
  'reinhard').
- typer.field_views 4 (the base default): each lab cell fitted as cut, mirrored, flipped and
  turned a quarter (tools/typer_variants.py: 0.884 against 0.866 over five deals into folds).
- typer.encoder_stages 3, typer.decoder_stages 2: fitted on the lab's own cells, the network's
  features pooled over each cell help (cross-validated 0.885 against 0.833 with the shipped
  typer's colours and shape alone, which type another lab's cells better untrained).
Measured by 5-fold cross-validation on bccd_fields (tools/cross_lab.py finetune_cv;
docs/results.md, 2026-12-07): 99.3% of white cells found, 87.5% +- 1.0% typed right over three
deals of the fields into folds (77.2% before fitting on the lab's cells, with the shipped typer
of 2026-12-08), calibration error
0.07-0.10; under 2 minutes on 2 shared cores for ~110 fields, most of it the features of the
training cells and the lab's fields. It pays with about a hundred typed fields: fitted on 10 / 27
/ 108, held-out fields were typed 0.75 / 0.64 / 0.82 right, the shipped typer 0.79. So the fit
logs (and keeps in cell_typer.json) how many of the lab's cells a typer fitted without their
field types right (lab_cross_validated) against the shipped typer (lab_before), and warns where
fitting did worse (bccd_fields' 136 fields: 0.860 against 0.787).
"""

from wcsegnet_jax.model import shipped_model


MODEL = 'differential'  # the shipped five-type model, made for other labs' smears


def get_config():
  config = shipped_model.load_config(shipped_model.model_dir(MODEL))
  config.name = 'finetune_fields'
  config.train.init_from = f'pretrained:{MODEL}'
  config.train.num_epochs = 0
  config.data.fields_dir = ''  # the lab's folder, given on the command line
  config.data.fields_scale = 0.0  # estimated per field (when the network trains on them)
  config.typer.fit = True
  config.typer.crop_color = 'field'
  config.typer.field_weight = 20.0
  config.typer.encoder_stages, config.typer.decoder_stages = 3, 2  # the net's features too
  return config
