r"""Predict's speed, XLA (JAX) beside ONNX Runtime, in one run on the same cores.

  pip install -e '.[export]'
  python tools/benchmark_predict.py [--model=differential] [--threads=0] [--crops=64] [--fields=4]

For each backend, with and without the flip average (TTA) and at batch 1 and 16: cell crops per
second (120x120 crops through predict's crop path: colour step, resize, network) and 640x480
fields per second (predict --field_scale=1.0's path: colour step on the whole field, 63
overlapping tiles, stitching). Compilation (XLA) and session set-up (ONNX Runtime) come before
the clock; each figure is the best of --repeats passes. Inputs are generated (smooth noise), so
the figures are the network's and the path's, not a data set's.
"""

import datetime
import os
import platform
import time

from absl import app
from absl import flags
import numpy as np

FLAGS = flags.FLAGS
flags.DEFINE_string(
  'model', None, 'A shipped model by name or a model folder (default: the shipped default).'
)
flags.DEFINE_integer(
  'threads',
  0,
  "ONNX Runtime's threads (0: one per core); XLA:CPU uses "
  'every core it is given (run under taskset to give it fewer).',
)
flags.DEFINE_integer('crops', 64, 'Cell crops per timed pass.')
flags.DEFINE_integer('fields', 4, '640x480 fields per timed pass.')
flags.DEFINE_integer('repeats', 2, 'Timed passes per figure; the best is reported.')
flags.DEFINE_list('backends', ['jax', 'onnx'], 'Backends to time.')
flags.DEFINE_list('batch_sizes', ['1', '16'], 'Batch sizes to time.')


def smooth_images(n: int, height: int, width: int, seed: int) -> list[np.ndarray]:
  import cv2

  rng = np.random.default_rng(seed)
  return [
    cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), np.uint8), (0, 0), 4)
    for _ in range(n)
  ]


def best_time(fn, repeats: int) -> float:
  fn()  # warm-up: compilation, first allocations
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return min(times)


def main(argv):
  del argv
  from wcsegnet_jax.inference import segmenter
  from wcsegnet_jax.model import shipped_model
  from wcsegnet_jax.export import onnx_backend

  config, variables, _ = shipped_model.load(shipped_model.model_dir(FLAGS.model))
  name = shipped_model.model_dir(FLAGS.model).name
  crops = smooth_images(FLAGS.crops, 120, 120, 0)
  fields = smooth_images(FLAGS.fields, 480, 640, 1)
  graph = info = None
  if 'onnx' in FLAGS.backends:
    exported = onnx_backend.from_model(config, variables, name, tta=False)
    graph, info = exported._graph, exported._info  # pylint: disable=protected-access
  print(
    f'# {name} model, {os.cpu_count()} CPU cores seen ({platform.processor() or "?"}), '
    f'ONNX Runtime threads {FLAGS.threads or "auto"}, '
    f'{datetime.date.today().isoformat()}'
  )
  print('| backend | TTA | batch | crops/s | fields/s | s per field |')
  print('| --- | --- | ---: | ---: | ---: | ---: |')
  for backend in FLAGS.backends:
    for tta in (False, True):
      for batch in (int(b) for b in FLAGS.batch_sizes):
        if backend == 'jax':
          segment = segmenter.Segmenter(config, variables, tta, batch)
        else:
          segment = onnx_backend.OnnxSegmenter(config, graph, info, tta, batch, FLAGS.threads)
        crop_s = best_time(lambda: segment.crops(crops), FLAGS.repeats)
        field_s = best_time(lambda: [segment.field(f, 1.0) for f in fields], FLAGS.repeats)
        backend_name = 'XLA (jax)' if backend == 'jax' else 'ONNX Runtime'
        print(
          f'| {backend_name} | {"flips" if tta else "none"} | {batch} | '
          f'{len(crops) / crop_s:.1f} | {len(fields) / field_s:.2f} | '
          f'{field_s / len(fields):.3f} |',
          flush=True,
        )


if __name__ == '__main__':
  app.run(main)
