r"""ONNX Runtime against JAX on real images: the figures of docs/export.md.

  WCSEG_DATA_DIR=/path/to/segmentation_WBC python tools/export_parity.py [--model=differential]
  python tools/export_parity.py --paper_size     # configs/wcseg.py's network, random weights

With a shipped model: every test-split image its info.json names (the WBC Image Dataset), as
predict runs them (colour step, resize, the model's flip average): the largest probability
difference, the share of pixels whose argmax and whose decoded class (eval.decode, what the
masks show) agree, and the same for the whole graph fed raw crops (its own colour step).
With --paper_size: the paper's 63.9M-parameter network, freshly initialised, on generated crops.
"""

import os
import pathlib
import time

from absl import app
from absl import flags
import numpy as np

FLAGS = flags.FLAGS
flags.DEFINE_string('model', None, 'A shipped model by name (default: the shipped default).')
flags.DEFINE_bool('paper_size', False, "configs/wcseg.py's network instead (random weights).")


def report(name: str, reference: list, got: list, table, decode: str) -> None:
  from wcsegnet_jax.model import decoding

  diff = max(float(np.abs(a - b).max()) for a, b in zip(reference, got))
  pixels = sum(a.shape[0] * a.shape[1] for a in reference)
  argmax = sum(int((a.argmax(-1) == b.argmax(-1)).sum()) for a, b in zip(reference, got))
  decoded = sum(
    int((decoding.decode(a, table, decode) == decoding.decode(b, table, decode)).sum())
    for a, b in zip(reference, got)
  )
  identical = sum(
    bool(np.array_equal(decoding.decode(a, table, decode), decoding.decode(b, table, decode)))
    for a, b in zip(reference, got)
  )
  print(
    f'{name}: {len(reference)} images, {pixels} pixels: max |p_onnx - p_jax| = {diff:.2e}, '
    f'argmax agrees on {argmax / pixels:.6f}, {decode} classes on {decoded / pixels:.6f}; '
    f'{identical}/{len(reference)} label maps identical'
  )


def main(argv):
  del argv
  import cv2
  import jax
  import jax.numpy as jnp
  from wcsegnet_jax.core import classes
  from wcsegnet_jax.model import models
  from wcsegnet_jax.inference import segmenter
  from wcsegnet_jax.model import shipped_model
  from wcsegnet_jax.export import onnx_backend
  from wcsegnet_jax.export import onnx_export

  if FLAGS.paper_size:
    from configs import wcseg

    config = wcseg.get_config()
    variables = models.model_for(config).init(
      jax.random.key(0), jnp.zeros((1, 120, 120, 3)), train=False
    )
    variables = {'params': variables['params'], 'batch_stats': variables['batch_stats']}
    print(f'configs/wcseg.py: {models.count_params(variables["params"]):,} parameters')
    start = time.perf_counter()
    onnx_path = onnx_backend.from_model(config, variables, 'wcseg', tta=False, batch_size=4)
    print(f'exported in {time.perf_counter() - start:.0f} s')
    rng = np.random.default_rng(0)
    crops = [
      cv2.GaussianBlur(rng.integers(0, 256, (120, 120, 3), np.uint8), (0, 0), 3) for _ in range(8)
    ]
    jax_path = segmenter.Segmenter(config, variables, False, batch_size=4)
    report(
      'paper-size network, generated crops',
      jax_path.crops(crops),
      onnx_path.crops(crops),
      classes.table_of(config.data),
      config.eval.decode,
    )
    return
  directory = shipped_model.model_dir(FLAGS.model)
  config, variables, info = shipped_model.load(directory)
  root = pathlib.Path(os.environ['WCSEG_DATA_DIR'])
  folders = {'jiangxi': 'Dataset 1', 'cellavision': 'Dataset 2'}
  tta = bool(config.eval.tta)
  jax_path = segmenter.Segmenter(config, variables, tta)
  onnx_path = onnx_backend.from_model(config, variables, directory.name, tta)
  table = classes.table_of(config.data)
  graph = onnx_backend.session(onnx_path._graph)  # pylint: disable=protected-access
  for dataset, split in info['images'].items():
    images = [
      cv2.cvtColor(cv2.imread(str(root / folders[dataset] / f'{i}.bmp')), cv2.COLOR_BGR2RGB)
      for i in split['test']
    ]
    reference = jax_path.crops(images)
    report(
      f'{directory.name}, {dataset} test split, predict path (TTA {tta})',
      reference,
      onnx_path.crops(images),
      table,
      config.eval.decode,
    )
    plain = jax_path.without_tta().crops(images)
    size = config.data.image_size
    raw = np.stack(
      [
        cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
        if image.shape[:2] != (size, size)
        else image
        for image in images
      ]
    )
    whole = list(graph.run(None, {onnx_export.INPUT: raw})[0])
    report(
      f'{directory.name}, {dataset}, whole graph fed raw crops resized (no TTA)',
      plain,
      whole,
      table,
      config.eval.decode,
    )


if __name__ == '__main__':
  app.run(main)
