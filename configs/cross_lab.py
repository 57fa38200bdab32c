"""The five-part differential made for other labs' smears: the colour step and stain and optics
augmentation on configs/differential.py. The model predict uses by default.

  python -m wcsegnet_jax.main --config=configs/cross_lab.py --workdir=runs/cross_lab

What differs from configs/differential.py (all five types and the cytoplasm) and why
(docs/results.md, "Other labs' smears"):
- data.color 'reinhard': each image's CIELAB means and stds moved to the CellaVision images'
  average before anything else (wcsegnet_jax/data/color.py), in training, evaluation and predict:
  another lab's stain, lamp and camera reach the model in familiar colours.
- Colour jitter after it (brightness, contrast 0.15, saturation 0.25, hue 5 degrees): what the
  colour step leaves of a stain's differences. Hue stays small: eosinophils are told from
  neutrophils by their granules' colour.
- Optics jitter: gamma 0.25, blur up to sigma 1 px, noise up to 3 levels, JPEG quality 50-95:
  other microscopes, cameras and compressed files.
Measured (seed 0, 2026-12-06, docs/results.md "Other labs' smears"; the shipped `differential`
model): test nucleus Dice 0.954 / 0.963 (Jiangxi / CellaVision), five-type cell accuracy 0.85 /
0.67; on another lab's fields (bccd_fields, --field_scale=auto) 99.3% of white cells found, 0.015
false cells per field (0.06 before the speck size of 280 px, 2026-12-07), 62% typed right by the
nucleus-pixel vote, 68% by the cell typer shipped with it (tools/fit_cell_typer.py). ~17
minutes on 2 cores (shared with other jobs).
"""

from configs import differential


def get_config():
  config = differential.get_config()
  config.name = 'cross_lab'
  config.data.color = 'reinhard'
  a = config.augment
  a.brightness, a.contrast, a.saturation, a.hue_deg = 0.15, 0.15, 0.25, 5.0
  a.gamma, a.blur_sigma, a.noise_std, a.jpeg_quality = 0.25, 1.0, 3.0, 50
  return config
