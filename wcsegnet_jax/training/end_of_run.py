"""What a finished training run shows: its evaluation reports, its curves, and what to do next.

After the last epoch the training command evaluates the checkpoint `--mode=evaluate` would
(`evaluate.evaluate_checkpoint`: report.md, figure.png and worst.png per test split), draws the
training curves (`curves.plot_runs`) and prints a few lines naming them, the nucleus Dice of
each dataset and the predict command for the workdir.
"""

import pathlib

import jax
import ml_collections

from wcsegnet_jax.cells import cell_typing
from wcsegnet_jax.evaluation import curves
from wcsegnet_jax.evaluation import evaluate
from wcsegnet_jax.model import restore
from wcsegnet_jax.training import typer_fitting

CURVES_FILE = 'curves.png'


def report(config: ml_collections.ConfigDict, workdir: pathlib.Path, seconds: float) -> str | None:
  """Evaluates the run's checkpoint (config.eval.checkpoint) on every test split, writes the
  curves figure, and returns the summary (None on processes other than 0)."""
  checkpoint = str(config.eval.checkpoint).strip()
  has_test = bool(config.eval.raw_dir) or config.data.test_fraction > 0
  written = evaluate.evaluate_checkpoint(config, str(workdir), checkpoint) if has_test else {}
  if jax.process_index() != 0:
    return None
  keeps_average = restore.keeps_average(workdir, checkpoint)
  report_dirs = {
    name: workdir / 'eval' / evaluate.report_folder(name, config, keeps_average) for name in written
  }
  curves_png = workdir / CURVES_FILE if written else None  # curves are per evaluated epoch
  try:
    if curves_png:
      curves.plot_runs({config.name: workdir}, curves_png)
  except ValueError:  # no epoch logged (a run of fewer steps than one log)
    curves_png = None
  dice = {name: metrics['paper']['dice'] for name, metrics in written.items()}
  return summary_text(
    workdir,
    seconds,
    dice,
    report_dirs,
    curves_png,
    _lab_fit(config, workdir),
    trained=bool(config.train.num_epochs),
    field_scale=f'{config.data.fields_scale:g}' if config.data.fields_scale else 'auto',
  )


def _lab_fit(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict | None:
  """A run on a lab's typed fields: its typer's two figures on them (`lab_estimates`); else None."""
  if not config.data.fields_dir:
    return None
  typer = cell_typing.LinearTyper.load(workdir) if config.typer.fit else None
  return {} if typer is None else typer_fitting.lab_estimates(typer.info)


def summary_text(
  workdir: pathlib.Path,
  seconds: float,
  nucleus_dice: dict[str, float | None],
  report_dirs: dict[str, pathlib.Path],
  curves_png: pathlib.Path | None,
  lab_fit: dict | None = None,
  trained: bool = True,
  field_scale: str = 'auto',
) -> str:
  """The lines a finished run ends on: its results, where they are, the next command. A run on
  a lab's typed fields (`lab_fit` not None: its typer's `lab_estimates`) adds how its cells were
  typed, and its predict command types whole fields at the run's `field_scale` (the scale its
  crops were cut at: 'auto', estimated per field, unless data.fields_scale). A run of no epochs
  (`trained` False) kept its network and fitted its cell typer only."""
  dice = ', '.join(
    f'{name} {"n/a" if d is None else f"{d:.3f}"}' for name, d in nucleus_dice.items()
  )
  lines = [
    f'{"Training" if trained else "Cell typer fitted, the network kept,"} done in '
    f'{_duration(seconds)}; results in {workdir}',
    f'  test nucleus Dice (1 = perfect overlap with the labelled nuclei): {dice}'
    if dice
    else '  no test split (data.test_fraction=0): nothing evaluated',
  ]
  lines += [
    f'  report: {folder / "report.md"} (figures: {folder / "figure.png"}, {folder / "worst.png"})'
    for folder in report_dirs.values()
  ]
  if curves_png is not None:
    lines.append(f'  training curves: {curves_png}')
  if lab_fit is None:
    lines.append(
      f'Next, segment your own images: python -m wcsegnet_jax.predict '
      f'--workdir={workdir} --output={workdir / "predictions"} IMAGE_OR_FOLDER...'
    )
    return '\n'.join(lines)
  if 'cross_validated' in lab_fit:
    before = lab_fit.get('before')
    lines.append(
      f"  the lab's {lab_fit['cells']} typed cells: {lab_fit['cross_validated']:.3f} typed right "
      f'by a typer fitted without their field'
      + ('' if before is None else f", {before:.3f} by the starting model's typer")
      + (' (fitting did worse: see the warning above)' if lab_fit.get('warned') else '')
    )
  lines.append(
    f'Next, find and type the cells of your fields: python -m wcsegnet_jax.predict '
    f'--workdir={workdir} --field_scale={field_scale} --output={workdir / "predictions"} '
    f'FIELDS_OR_FOLDER...'
  )
  return '\n'.join(lines)


def _duration(seconds: float) -> str:
  minutes, secs = divmod(round(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  return f'{hours} h {minutes:02d} min' if hours else f'{minutes} min {secs:02d} s'
