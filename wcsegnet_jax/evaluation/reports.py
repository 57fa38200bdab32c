"""Evaluation reports: metrics.json, report.md beside the paper's Table 1, and figure grids.

Numbers, markdown tables and PNGs are made here once for every writer (evaluation, benchmarks,
run summaries, tools), so the same value reads the same everywhere. Every file is written
atomically (`wcsegnet_jax.files`), so a crash or a full disk leaves the previous report, never
half of a new one.
"""

import io
import pathlib
from typing import Any, Sequence

from matplotlib import patches
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np

from wcsegnet_jax.core import classes
from wcsegnet_jax.core.files import write_bytes_atomic
from wcsegnet_jax.core.files import write_csv_atomic
from wcsegnet_jax.core.files import write_json_atomic
from wcsegnet_jax.core.files import write_text_atomic
from wcsegnet_jax.model import metrics

# Table 1 of the paper (WCSegNet, Nasser et al., ISI 30(1), 2025): nucleus-vs-
# background metrics per dataset. Only the values we hold from the paper for certain are filled
# in; a missing key is a cell we do not know ("n/a" in reports), never a guess. We read the
# paper's paired values "Dice 0.9653/0.9662, mIoU 0.9599/0.9609" as (Jiangxi, CellaVision), the
# order in which it lists the datasets. Fan et al. 2019 is the prior work the paper quotes at
# Dice 0.982 on both.
PAPER_COLUMNS = ('accuracy', 'precision', 'recall', 'dice', 'miou')
PAPER_TABLE1 = {
  'jiangxi': (
    ('U-Net (ReLU)', {}),
    ('U-Net (LeakyReLU)', {}),
    ('WCSegNet', {'dice': 0.9653, 'miou': 0.9599}),
    ('Fan et al. 2019', {'dice': 0.982}),
  ),
  'cellavision': (
    ('U-Net (ReLU)', {}),
    ('U-Net (LeakyReLU)', {}),
    ('WCSegNet', {'dice': 0.9662, 'miou': 0.9609}),
    ('Fan et al. 2019', {'dice': 0.982}),
  ),
}
COLUMN_TITLES = {
  'accuracy': 'Accuracy',
  'precision': 'Precision',
  'recall': 'Recall',
  'dice': 'Dice',
  'miou': 'mIoU',
  'iou': 'IoU',
}


# ------------------------------------------------------------------------------------------------
# Numbers, tables and PNGs: the one way every report, benchmark and tool writes them.
# ------------------------------------------------------------------------------------------------


def format_number(value: Any, digits: int | None = 4, missing: str = 'n/a') -> str:
  """A number as report text: `missing` for None, an integer as it is, else `digits` decimals.

  `digits=None` keeps about four significant digits (0 to 3 decimals by magnitude), for
  quantities of any scale such as timings and throughputs.
  """
  if value is None:
    return missing
  if isinstance(value, (int, np.integer)):
    return str(int(value))
  v = float(value)
  if digits is None:
    digits = 0 if abs(v) >= 1000 else 1 if abs(v) >= 100 else 2 if abs(v) >= 1 else 3
  return f'{v:.{digits}f}'


def markdown_table(
  header: Sequence[str], rows: Sequence[Sequence[Any]], right_aligned: Sequence[int] = ()
) -> str:
  """A GitHub-flavoured markdown table; the columns numbered in `right_aligned` align right."""
  rule = ['---:' if i in right_aligned else '---' for i in range(len(header))]
  lines = [header, rule] + [[str(c) for c in row] for row in rows]
  return '\n'.join('| ' + ' | '.join(cells) + ' |' for cells in lines)


def new_figure(**kwargs) -> Figure:
  """A matplotlib figure drawn by Agg, without pyplot (no global state, no GUI backend)."""
  fig = Figure(**kwargs)
  FigureCanvasAgg(fig)
  return fig


def figure_bytes(fig: Figure, **savefig_kwargs) -> bytes:
  """A figure as PNG bytes."""
  buffer = io.BytesIO()
  fig.savefig(buffer, format='png', **savefig_kwargs)
  return buffer.getvalue()


# ------------------------------------------------------------------------------------------------
# Figures: rows of original | ground truth | prediction, as the paper's Figure 7.
# ------------------------------------------------------------------------------------------------


def figure_png(
  images: np.ndarray,
  label_maps: np.ndarray,
  predictions: np.ndarray,
  row_titles: Sequence[str],
  title: str = '',
  table: classes.ClassTable = classes.PAPER_TABLE,
) -> bytes:
  """A PNG grid: one row per image; columns original | ground truth | prediction, in the
  colours of `table`'s classes."""
  n = len(images)
  fig = new_figure(figsize=(6.0, 2.0 * max(n, 1) + 0.8), dpi=100)
  axes = fig.subplots(max(n, 1), 3, squeeze=False)
  for r in range(n):
    panels = (images[r], table.colorize(label_maps[r]), table.colorize(predictions[r]))
    for c, panel in enumerate(panels):
      ax = axes[r, c]
      ax.imshow(panel, interpolation='nearest')
      ax.set_xticks([])
      ax.set_yticks([])
      if r == 0:
        ax.set_title(('original', 'ground truth', 'prediction')[c], fontsize=10)
    axes[r, 0].set_ylabel(row_titles[r], fontsize=7)
  if n == 0:
    axes[0, 1].text(0.5, 0.5, 'no images', ha='center', va='center')
    for ax in axes[0]:
      ax.set_axis_off()
  legend = [
    patches.Patch(color=color / 255.0, label=name) for color, name in zip(table.colors, table.names)
  ]
  fig.legend(
    handles=legend, loc='lower center', ncol=min(len(legend), 4), fontsize=8, frameon=False
  )
  if title:
    fig.suptitle(title, fontsize=11)
  fig.tight_layout(rect=(0, 0.04, 1, 0.97 if title else 1))
  return figure_bytes(fig)


def figure_indices(cell_types: np.ndarray, n: int) -> list[int]:
  """Up to `n` images taking the cell types in turn (first images of each type first)."""
  by_type = [list(np.flatnonzero(cell_types == t)) for t in np.unique(cell_types)]
  picked = []
  while len(picked) < n and any(by_type):
    for group in by_type:
      if group and len(picked) < n:
        picked.append(int(group.pop(0)))
  return picked


def worst_indices(
  nucleus_dice: np.ndarray, k: int, mistyped: np.ndarray | None = None
) -> list[int]:
  """The `k` worst images: those whose cell was mistyped (`mistyped`, bool per image) first,
  then the lowest nucleus Dice; by Dice within each (ties keep the dataset's order). A cell
  typed wrong is the error a differential count feels, however well it is outlined."""
  mistyped = np.zeros(len(nucleus_dice), bool) if mistyped is None else np.asarray(mistyped)
  order = np.lexsort((np.arange(len(nucleus_dice)), nucleus_dice, ~mistyped))
  return [int(i) for i in order[:k]]


# ------------------------------------------------------------------------------------------------
# report.md
# ------------------------------------------------------------------------------------------------


def table_of_summary(summary: dict) -> classes.ClassTable:
  """The classes an `evaluate.summarize` summary was computed with (the paper's if it predates
  recording them)."""
  return classes.table_from_names(summary.get('classes', classes.PAPER_TABLE.names))


def paper_comparison_table(summary: dict, paper_key: str | None, ours_label: str) -> str:
  """The paper's Table 1 rows for `paper_key` (if any) and ours: pooled and per-image means."""
  header = ['Method'] + [COLUMN_TITLES[k] for k in PAPER_COLUMNS]
  rows = [
    [f'{method} (paper)'] + [format_number(values.get(k)) for k in PAPER_COLUMNS]
    for method, values in PAPER_TABLE1.get(paper_key, ())
    if values
  ]  # none: no row
  rows.append(
    [f'**{ours_label}**, pooled pixels']
    + [format_number(summary['paper'][k]) for k in PAPER_COLUMNS]
  )
  per_image = summary['per_image']['paper']
  rows.append(
    [f'{ours_label}, mean ± std over images']
    + [
      f'{format_number(per_image[k]["mean"])} ± {format_number(per_image[k]["std"])}'
      if per_image[k]['mean'] is not None
      else 'n/a'
      for k in PAPER_COLUMNS
    ]
  )
  return markdown_table(header, rows)


def whole_cell_lines(summary: dict) -> list[str]:
  """With a cytoplasm class: the whole cell's Dice and IoU (nucleus or cytoplasm vs
  background), pooled and over images; nothing otherwise."""
  if 'cell_dice' not in summary['paper']:
    return []
  per_image = summary['per_image']['paper']
  spread = lambda k: f'{format_number(per_image[k]["mean"])} ± {format_number(per_image[k]["std"])}'
  return [
    '## Whole cells (nucleus or cytoplasm vs background)',
    '',
    markdown_table(
      ['', 'Dice', 'IoU'],
      [
        ['pooled pixels'] + [format_number(summary['paper'][k]) for k in metrics.CELL_METRICS],
        ['mean ± std over images'] + [spread(k) for k in metrics.CELL_METRICS],
      ],
    ),
    '',
  ]


def per_class_table(summary: dict) -> str:
  pc = summary['per_class']
  rows = [
    [name if pc['support'][name] else f'{name} (none labelled)', format_number(pc['support'][name])]
    + [format_number(pc[k][name]) for k in metrics.CLASS_METRICS]
    for name in pc['support']
    if pc['support'][name] or pc['dice'][name] is not None
  ]
  means = metrics.labelled_class_means(pc)
  rows.append(
    ['mean (labelled classes)', ''] + [format_number(means[k]) for k in metrics.CLASS_METRICS]
  )
  header = ['Class', 'Labelled pixels'] + [
    COLUMN_TITLES.get(k, k.capitalize()) for k in metrics.CLASS_METRICS
  ]
  return markdown_table(header, rows)


def cell_table(summary: dict) -> str:
  cells, table = summary['cells'], table_of_summary(summary)
  cm = np.asarray(cells['confusion_matrix'])
  names = [table.name(c) for c in range(cm.shape[0])]
  rows = [
    [names[t]] + [str(v) for v in cm[t]] + [format_number(cells['recall'][table.names[t]])]
    for t in range(cm.shape[0])
    if cm[t].sum() > 0
  ]
  return markdown_table(['true \\ predicted'] + names + ['Recall'], rows)


def markdown_report(
  summary: dict, meta: dict, worst: Sequence[dict], paper_key: str | None, n_shown: int
) -> str:
  ours = f'ours ({meta["config_name"]}, step {meta["checkpoint_step"]})'
  cells = summary['cells']
  lines = [
    f'# Evaluation of {summary["dataset"]}',
    '',
    f'Checkpoint step {meta["checkpoint_step"]} ({meta["checkpoint_dir"]}), config '
    f'`{meta["config_name"]}`, {summary["n_images"]} images at {meta["image_size"]}x'
    f'{meta["image_size"]}, test-time augmentation {"on" if meta["tta"] else "off"}, '
    f'mean loss {format_number(summary["loss"])}.',
    '',
    "## Nucleus vs background (the paper's Table 1)",
    '',
    paper_comparison_table(summary, paper_key, ours),
    '',
    (
      'Paper rows: WCSegNet (Nasser et al. 2025), Table 1; "n/a" marks values we do not hold. '
      if paper_key
      else 'The paper has no rows for this data. '
    )
    + 'Ours: "pooled" counts every pixel of the split at once; the per-image rows average each '
    "image's own value (an image with no nucleus in label nor prediction scores 1). mIoU is "
    'the mean of the background IoU and the nucleus IoU (see `wcsegnet_jax/model/metrics.py`).',
    '',
    *whole_cell_lines(summary),
    '## Per class (pooled pixels)',
    '',
    per_class_table(summary),
    '',
    '## Per cell (type = majority vote of the predicted nucleus pixels)',
    '',
    f'Cell accuracy {format_number(cells["cell_accuracy"])} over {cells["n_cells"]} cells, '
    f'mean recall {format_number(cells["mean_recall"])}, '
    f'{cells["n_no_nucleus_predicted"]} cells with no predicted '
    'nucleus ("none").',
    '',
    cell_table(summary),
    '',
    f'## The {len(worst)} worst images: mistyped cells first, then lowest nucleus Dice',
    '',
    markdown_table(
      ['Rank', 'Image', 'True type', 'Predicted type', 'Nucleus Dice'],
      [
        [i + 1, w['file_id'], w['true_type'], w['predicted_type'], format_number(w['nucleus_dice'])]
        for i, w in enumerate(worst)
      ],
    ),
    '',
    '![worst images](worst.png)',
    '',
    f'## Examples ({n_shown} images, cell types in turn)',
    '',
    '![original | ground truth | prediction](figure.png)',
    '',
  ]
  return '\n'.join(lines)


# ------------------------------------------------------------------------------------------------
# One dataset's reports.
# ------------------------------------------------------------------------------------------------


def write_dataset_reports(
  out_dir: str | pathlib.Path,
  result,
  summary: dict,
  predicted_types: np.ndarray,
  meta: dict,
  paper_key: str | None,
  figure_rows: int,
  worst_k: int,
) -> dict:
  """Writes metrics.json, per_image.csv, report.md, figure.png and worst.png into `out_dir`.

  `result` is an `evaluate.EvalResult` with maps kept, `summary` its `evaluate.summarize`,
  `predicted_types` each image's voted cell type (`evaluate.predicted_cell_types`); `meta` holds
  checkpoint_step, checkpoint_dir, config_name, tta and image_size. `paper_key` picks the rows of
  PAPER_TABLE1 ('jiangxi' | 'cellavision' | None). Returns the dict written to metrics.json.
  """
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  table = table_of_summary(summary)
  dice = metrics.dice_per_image(result.confusion, table=table)
  predicted = np.asarray(predicted_types)
  rows = [
    {
      'file_id': str(result.file_ids[i]),
      'true_type': table.name(int(result.cell_types[i])),
      'predicted_type': table.name(int(predicted[i])),
      'nucleus_dice': float(dice[i]),
      'loss': float(result.loss[i]),
    }
    for i in range(len(result.file_ids))
  ]
  worst_idx = worst_indices(dice, worst_k, predicted != np.asarray(result.cell_types))
  worst = [rows[i] for i in worst_idx]
  shown = figure_indices(result.cell_types, figure_rows)

  def grid(indices, title, label):
    return figure_png(
      result.images[indices],
      result.label_maps[indices],
      result.prediction[indices],
      [label(i) for i in indices],
      title,
      table,
    )

  write_bytes_atomic(
    out_dir / 'figure.png',
    grid(
      shown,
      summary['dataset'],
      lambda i: f'{rows[i]["file_id"]}\n{rows[i]["true_type"]} -> {rows[i]["predicted_type"]}',
    ),
  )
  write_bytes_atomic(
    out_dir / 'worst.png',
    grid(
      worst_idx,
      f'{summary["dataset"]}: mistyped cells, then lowest nucleus Dice',
      lambda i: (
        f'{rows[i]["file_id"]}  Dice {rows[i]["nucleus_dice"]:.3f}\n'
        f'{rows[i]["true_type"]} -> {rows[i]["predicted_type"]}'
      ),
    ),
  )
  write_csv_atomic(
    out_dir / 'per_image.csv',
    list(rows[0]) if rows else ['file_id'],
    [list(r.values()) for r in rows],
  )
  write_text_atomic(
    out_dir / 'report.md', markdown_report(summary, meta, worst, paper_key, len(shown))
  )
  # metrics.json last: when it is there, the files it describes are complete.
  report = {**meta, **summary, 'worst': worst}
  write_json_atomic(out_dir / 'metrics.json', report)
  return report


def summary_table(reports: dict[str, dict]) -> str:
  """A short plain-text table of the datasets' headline numbers, for the terminal."""
  header = ('dataset', 'images', 'accuracy', 'dice', 'miou', 'cell acc')
  rows = [
    (name, str(r['n_images']))
    + tuple(format_number(r['paper'][k]) for k in ('accuracy', 'dice', 'miou'))
    + (format_number(r['cells']['cell_accuracy']),)
    for name, r in reports.items()
  ]
  widths = [
    max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)
  ]
  fmt = lambda cells: '  '.join(c.ljust(w) for c, w in zip(cells, widths))
  return '\n'.join([fmt(header), fmt(['-' * w for w in widths])] + [fmt(r) for r in rows])
