r"""Exports a trained model to ONNX and as a bioimage.io model package (docs/export.md).

  pip install -e '.[export]'
  python tools/export_model.py --output=export/differential            # the shipped default
  python tools/export_model.py --output=export/paper --model=paper
  python tools/export_model.py --output=export/my_run --workdir=runs/cpu --licence=CC-BY-4.0

Writes DIR/model.onnx (uint8 RGB in, class probabilities out, the colour step and normalisation
inside, any batch size), DIR/model.json (classes, colours, input size, scale, training data, the
source weights' checksum, opset), and the bioimage.io package: DIR/bioimageio/ and
DIR/wcsegnet_<name>.bioimageio.zip, checked by bioimageio.core's model test.
"""

import sys

from absl import app
from absl import flags

from wcsegnet_jax.core import errors
from wcsegnet_jax.core import logs
from wcsegnet_jax.export import onnx_export
from wcsegnet_jax.model import shipped_model

FLAGS = flags.FLAGS
flags.DEFINE_string('output', None, 'Folder to write into (new or empty, unless --overwrite).')
flags.DEFINE_string(
  'workdir',
  None,
  'A training workdir: its checkpoint (--checkpoint) is exported. Without it, a shipped model.',
)
flags.DEFINE_string(
  'checkpoint',
  None,
  "With --workdir: 'latest', 'best' or a step (default: the workdir config's eval.checkpoint).",
)
flags.DEFINE_string(
  'model',
  None,
  'A shipped model by name (%s; default %s) or a model folder.'
  % (', '.join(shipped_model.MODEL_NAMES), shipped_model.DEFAULT_MODEL),
)
flags.DEFINE_integer(
  'opset',
  onnx_export.DEFAULT_OPSET,
  'ONNX opset (%d..%d).' % (onnx_export.OPSETS[0], onnx_export.OPSETS[-1]),
)
flags.DEFINE_bool(
  'tta',
  False,
  'Put the average over the four flips into the graph (4x the '
  'work; predict --backend=onnx wants a graph without it).',
)
flags.DEFINE_bool('overwrite', False, 'Write into an --output folder that holds files.')
flags.DEFINE_bool('bioimageio', True, 'Also write the bioimage.io model package.')
flags.DEFINE_bool('test', True, "Run bioimageio.core's model test on the package.")
flags.DEFINE_string(
  'sample_image',
  None,
  "The package's test input and cover: an image of one "
  'cell (resized to the model size). Default: a drawn cell.',
)
flags.DEFINE_string(
  'licence',
  None,
  "The weights' SPDX licence for the package (default: "
  'GPL-3.0-only for a model trained on the WBC Image Dataset).',
)
flags.mark_flags_as_required(['output'])


def main(argv):
  if len(argv) > 1:
    print(f'error: unexpected arguments {argv[1:]} (see --help)', file=sys.stderr)
    sys.exit(2)
  logs.quiet_library_logs()
  with errors.user_errors_as_messages():
    from wcsegnet_jax.export import exporter

    result = exporter.export_model(
      FLAGS.output,
      FLAGS.workdir,
      FLAGS.model,
      FLAGS.checkpoint,
      FLAGS.opset,
      FLAGS.tta,
      FLAGS.overwrite,
      FLAGS.bioimageio,
      FLAGS.test,
      FLAGS.sample_image,
      FLAGS.licence,
    )
  print(result.text())
  if result.test_status not in (None, 'passed', 'valid-format'):
    print(result.test_details, file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  app.run(main)
