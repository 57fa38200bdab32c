"""The exported graph as a bioimage.io model package (format 0.5): what napari, Fiji/deepImageJ,
ilastik and bioimageio.core open.

The package folder holds rdf.yaml (the description), the ONNX weights, a test input (a cell crop
as uint8 RGB) and the output the weights give for it, a cover image (the crop | its classes),
README.md (documentation), and cites the paper and the dataset; the zip beside it is the same
package in one file. `test_package` runs bioimageio.core's own model test on it.
"""

import importlib
import pathlib
import shutil
import tempfile

import cv2
import numpy as np

from wcsegnet_jax.core import classes
from wcsegnet_jax.export import onnx_backend
from wcsegnet_jax.export import onnx_export

PACKAGE_DIR = 'bioimageio'
RDF_FILE = 'rdf.yaml'
TEST_INPUT = 'test_input.npy'
TEST_OUTPUT = 'test_output.npy'
COVER = 'cover.png'
DOC = 'README.md'
PAPER = (
  'Nasser, Belalem, Mahmoudi. WCSegNet: white blood cell segmentation and classification. '
  "Ingénierie des Systèmes d'Information 30(1), 2025.",
  '10.18280/isi.300102',
)
DATASET = (
  'Zheng, Wang, Wang, Liu. Fast and robust segmentation of white blood cell images by '
  'self-supervised learning. Micron 107:55-71, 2018 (the WBC Image Dataset).',
  '10.1016/j.micron.2018.01.010',
)
WBC_DATASETS = ('jiangxi', 'cellavision')
# What each colour step does, for the package's README (its numbers follow).
COLOUR_STEPS = {
  'reinhard': "each image's CIELAB means and standard deviations moved to",
  'two_point': "each image's background (brightest 30% of pixels) and nucleus (darkest 3%) "
  'colours moved to, in CIELAB,',
}
WBC_LICENCE = 'GPL-3.0-only'  # the WBC Image Dataset's, which the shipped weights keep


def require_extra() -> None:
  for module in ('bioimageio.spec', 'bioimageio.core'):
    try:
      importlib.import_module(module)
    except ImportError:
      raise onnx_export.ExportError(
        f'the Python package {module} is not installed; {onnx_export.EXTRA_HINT}'
      ) from None


def licence_of(info: dict, licence: str | None) -> str:
  """The weights' licence: given, or the WBC Image Dataset's for a model trained on it."""
  if licence:
    return licence
  if set(info['training_data']['datasets']) & set(WBC_DATASETS):
    return WBC_LICENCE
  raise onnx_export.ExportError(
    'this model was trained on data of yours: give its licence for the bioimage.io package '
    '(--licence=SPDX-ID, e.g. CC-BY-4.0), or --nobioimageio'
  )


def synthetic_cell(size: int) -> np.ndarray:
  """A drawn cell crop (pale background, pink cytoplasm, purple lobed nucleus): the test input
  when no image of a real cell is given."""
  image = np.full((size, size, 3), (232, 214, 196), np.uint8)
  c, r = size // 2, size // 3
  cv2.circle(image, (c, c), r, (214, 170, 196), -1)
  for dx, dy in ((-r // 3, -r // 4), (r // 4, -r // 5), (0, r // 3)):
    cv2.circle(image, (c + dx, c + dy), r // 3, (96, 48, 140), -1)
  noise = np.random.default_rng(0).integers(-6, 7, image.shape)
  return np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def read_sample(path: str | pathlib.Path | None, size: int) -> np.ndarray:
  """(size, size, 3) uint8 RGB: the image at `path` resized whole, or a drawn cell."""
  if path is None:
    return synthetic_cell(size)
  image = cv2.imread(str(path), cv2.IMREAD_COLOR)
  if image is None:
    raise onnx_export.ExportError(f'--sample_image={path}: not a readable image')
  image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
  if image.shape[:2] != (size, size):
    image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
  return image


def cover_image(
  image: np.ndarray, probabilities: np.ndarray, table: classes.ClassTable
) -> np.ndarray:
  """image | its classes (argmax, in their colours), enlarged to at least 256 pixels high."""
  both = np.concatenate([image, table.colorize(probabilities.argmax(-1))], axis=1)
  zoom = max(1, -(-256 // image.shape[0]))
  return np.repeat(np.repeat(both, zoom, 0), zoom, 1)


def documentation(info: dict, licence: str) -> str:
  size = info['image_size']
  step = info['colour_step']
  lines = [
    f'# WCSegNet: white-blood-cell segmentation and typing ({info["name"]})',
    '',
    'A U-Net of residual Conv-Blocks (WCSegNet, Nasser et al. 2025) trained with wcsegnet_jax '
    'and exported to ONNX. Each pixel of a cell crop gets a class:',
    '',
    '| id | class | colour |',
    '| ---: | --- | --- |',
    *[f'| {c["id"]} | {c["name"]} | RGB {tuple(c["color"])} |' for c in info['classes']],
    '',
    '## Input',
    '',
    f'`{onnx_export.INPUT}`: a batch of {size}x{size} RGB crops, uint8 as read (axes batch, y, '
    f"x, channel). One white cell per crop, at the training crops' magnification (a white "
    f'cell about 60-75 pixels across): resize a crop whole to {size}x{size}; cut a field of '
    f'many cells, resized to that magnification, into overlapping {size}x{size} tiles.',
    '',
    'Inside the graph: '
    + (
      f'the colour step ({step["name"]}: {COLOUR_STEPS.get(step["name"], "")} '
      f'{step["reference"]}), then '
      if step['in_graph']
      else ''
    )
    + f'the normalisation ({info["normalisation"]["normalize"]}) and the network; no '
    'preprocessing is needed.',
    '',
    '## Output',
    '',
    f'`{onnx_export.OUTPUT}`: class probabilities, float32, axes batch, y, x, channel (one '
    "channel per class above, summing to 1). The label map is their argmax. wcsegnet_jax's "
    f'own predict also averages the four flips (`tta`) and decodes `{info["decode"]}`: a pixel '
    'is nucleus when the nucleus classes together outweigh the rest, then takes its most '
    'probable type; the argmax differs from it on a few border pixels.',
    '',
    '## Training data',
    '',
    f'{", ".join(info["training_data"]["datasets"])} '
    f'({info["training_data"].get("train_images", "")}): '
    'the WBC Image Dataset (Zheng et al., Micron 2018).',
    '',
    '## Validation',
    '',
    'wcsegnet_jax checks the ONNX graph against the JAX model it came from (its '
    'tests/test_export.py and tools/export_parity.py; docs/export.md): the same probabilities '
    "to 1e-6 and the same label maps on the WBC Image Dataset's test splits. Test-split "
    "scores of the weights are in the model's info.json (wcsegnet_jax/pretrained/).",
    '',
    '## Licence',
    '',
    f'{licence}. The WBC Image Dataset is distributed under GPL-3.0; whether weights learned '
    'from it are a derivative work is unsettled, so the weights keep that licence.',
    '',
    '## Cite',
    '',
    f'- {PAPER[0]} doi:{PAPER[1]}',
    f'- {DATASET[0]} doi:{DATASET[1]}',
    '',
    f'Source weights SHA-256 (float32 msgpack): {info["source"]["variables_sha256"]}; ONNX '
    f'opset {info["opset"]}.',
    '',
  ]
  if not set(info['training_data']['datasets']) & set(WBC_DATASETS):
    lines = [line for line in lines if 'WBC Image Dataset is distributed' not in line]
  return '\n'.join(lines)


def describe(info: dict, folder: pathlib.Path, licence: str, name: str):
  """The bioimage.io ModelDescr of the files in `folder`."""
  import bioimageio.spec.model.v0_5 as spec

  size = int(info['image_size'])
  names = [c['name'] for c in info['classes']]
  file = lambda name: spec.FileDescr(source=folder / name)
  image_axes = [
    spec.BatchAxis(),
    spec.SpaceInputAxis(id=spec.AxisId('y'), size=size),
    spec.SpaceInputAxis(id=spec.AxisId('x'), size=size),
    spec.ChannelAxis(channel_names=[spec.Identifier(c) for c in 'RGB']),
  ]
  input_id = spec.TensorId(onnx_export.INPUT)
  output_axes = [
    spec.BatchAxis(),
    spec.SpaceOutputAxis(
      id=spec.AxisId('y'), size=spec.SizeReference(tensor_id=input_id, axis_id=spec.AxisId('y'))
    ),
    spec.SpaceOutputAxis(
      id=spec.AxisId('x'), size=spec.SizeReference(tensor_id=input_id, axis_id=spec.AxisId('x'))
    ),
    spec.ChannelAxis(channel_names=[spec.Identifier(n) for n in names]),
  ]
  return spec.ModelDescr(
    name=name,
    description=(
      'White-blood-cell segmentation and typing of a stained blood-smear crop '
      f'({", ".join(names[1:])}): WCSegNet trained with wcsegnet_jax.'
    ),
    covers=[file(COVER)],
    documentation=file(DOC),
    authors=[spec.Author(name='wcsegnet_jax contributors')],
    cite=[
      spec.CiteEntry(text=PAPER[0], doi=spec.Doi(PAPER[1])),
      spec.CiteEntry(text=DATASET[0], doi=spec.Doi(DATASET[1])),
    ],
    license=spec.LicenseId(licence),
    tags=[
      'segmentation',
      'semantic-segmentation',
      'white-blood-cell',
      'blood-smear',
      'hematology',
      'brightfield',
      '2d',
      'onnx',
      'u-net',
    ],
    version='0.1.0',
    inputs=[
      spec.InputTensorDescr(
        id=input_id,
        axes=image_axes,
        test_tensor=file(TEST_INPUT),
        description='RGB crop, uint8 as read; the colour step and normalisation are in the graph',
        data=spec.IntervalOrRatioDataDescr(type='uint8', range=(0, 255)),
      )
    ],
    outputs=[
      spec.OutputTensorDescr(
        id=spec.TensorId(onnx_export.OUTPUT),
        axes=output_axes,
        test_tensor=file(TEST_OUTPUT),
        description='class probabilities (softmax over the channel axis)',
        data=spec.IntervalOrRatioDataDescr(type='float32', range=(0.0, 1.0)),
      )
    ],
    weights=spec.WeightsDescr(
      onnx=spec.OnnxWeightsDescr(
        source=folder / onnx_export.ONNX_FILE, opset_version=int(info['opset'])
      )
    ),
  )


def write_package(
  out_dir: str | pathlib.Path,
  graph_path: str | pathlib.Path,
  info: dict,
  sample_image: str | pathlib.Path | None = None,
  licence: str | None = None,
) -> pathlib.Path:
  """DIR/bioimageio/ (rdf.yaml and its files) and DIR/<name>.bioimageio.zip; returns the zip."""
  require_extra()
  from bioimageio.spec import save_bioimageio_package, save_bioimageio_package_as_folder

  licence = licence_of(info, licence)
  out_dir = pathlib.Path(out_dir)
  size = int(info['image_size'])
  image = read_sample(sample_image, size)
  graph, _ = onnx_backend.read_graph(graph_path)
  probabilities = onnx_backend.session(graph).run(None, {onnx_export.INPUT: image[None]})[0]
  table = classes.table_from_names([c['name'] for c in info['classes']])
  with tempfile.TemporaryDirectory() as staging:  # the files, then the package written twice
    staging = pathlib.Path(staging)
    shutil.copyfile(graph_path, staging / onnx_export.ONNX_FILE)
    np.save(staging / TEST_INPUT, image[None])
    np.save(staging / TEST_OUTPUT, probabilities)
    cover = cover_image(image, probabilities[0], table)
    cv2.imwrite(str(staging / COVER), cv2.cvtColor(cover, cv2.COLOR_RGB2BGR))
    (staging / DOC).write_text(documentation(info, licence))
    descr = describe(info, staging, licence, _package_name(info))
    folder = out_dir / PACKAGE_DIR
    if folder.exists():
      shutil.rmtree(folder)
    save_bioimageio_package_as_folder(descr, output_path=folder)
    archive = out_dir / f'wcsegnet_{_slug(info["name"])}.bioimageio.zip'
    save_bioimageio_package(descr, output_path=archive)
  return archive


def _package_name(info: dict) -> str:
  return f'WCSegNet white blood cells - {info["name"]} ({len(info["classes"])} classes)'


def _slug(text: str) -> str:
  return ''.join(c if c.isalnum() else '_' for c in text.lower()).strip('_') or 'model'


def test_package(rdf_or_zip: str | pathlib.Path) -> tuple[str, str]:
  """(status, its details as text) of bioimageio.core's model test of a package."""
  require_extra()
  import bioimageio.core

  summary = bioimageio.core.test_model(str(rdf_or_zip))
  return summary.status, summary.format()
