"""tools/export_model.py's work: a trained workdir or a shipped model -> DIR/model.onnx,
DIR/model.json and the bioimage.io package, each checked before it is written."""

import dataclasses
import pathlib

from wcsegnet_jax.export import onnx_export
from wcsegnet_jax.inference import model_loading
from wcsegnet_jax.model import shipped_model


@dataclasses.dataclass
class ExportResult:
  graph: pathlib.Path
  info: dict
  package: pathlib.Path | None = None
  test_status: str | None = None
  test_details: str = ''

  def text(self) -> str:
    lines = [
      f'wrote {self.graph} (opset {self.info["opset"]}, input {self.info["input"]["name"]} '
      f'uint8 (batch, {self.info["image_size"]}, {self.info["image_size"]}, 3), output '
      f'{self.info["output"]["name"]} over {len(self.info["classes"])} classes) and '
      f'{self.graph.with_name(onnx_export.INFO_FILE)}'
    ]
    if self.package is not None:
      lines.append(
        f'wrote the bioimage.io package {self.package} (and its folder '
        f'{self.package.parent / "bioimageio"})'
      )
    if self.test_status is not None:
      lines.append(f'bioimageio.core model test: {self.test_status}')
    return '\n'.join(lines)


def model_name(workdir: str | None, model: str | None) -> str:
  if workdir:
    return pathlib.Path(workdir).expanduser().resolve().name
  directory = shipped_model.model_dir(model)
  return directory.name


def export_model(
  output: str | pathlib.Path,
  workdir: str | None = None,
  model: str | None = None,
  checkpoint: str | None = None,
  opset: int = onnx_export.DEFAULT_OPSET,
  tta: bool = False,
  overwrite: bool = False,
  bioimageio: bool = True,
  test: bool = True,
  sample_image: str | None = None,
  licence: str | None = None,
) -> ExportResult:
  """Exports a workdir's checkpoint (or a shipped model: `model`, or neither) into `output`."""
  onnx_export.require_extra()
  opset = onnx_export.check_opset(opset)
  if bioimageio:
    from wcsegnet_jax.export import bioimageio_package

    bioimageio_package.require_extra()
  out_dir = onnx_export.prepare_output(output, overwrite)
  config, variables, source, _ = model_loading.load_model(workdir, checkpoint, model)
  shipped_info = None
  if not workdir and checkpoint is None:
    shipped_info = shipped_model.load_info(shipped_model.model_dir(model))
  name = model_name(workdir, model)
  graph, info = onnx_export.export(
    config, variables, out_dir, source, opset, tta, shipped_info, name
  )
  result = ExportResult(graph, info)
  if bioimageio:
    result.package = bioimageio_package.write_package(out_dir, graph, info, sample_image, licence)
    if test:
      result.test_status, result.test_details = bioimageio_package.test_package(
        out_dir / bioimageio_package.PACKAGE_DIR / bioimageio_package.RDF_FILE
      )
  return result
