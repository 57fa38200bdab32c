"""Scoring found and typed cells against a lab's typed boxes (`data/typed_fields.py`).

Per field, a true cell is *found* when a predicted cell's box centre lies in its box; where
several do (a cell split in two), the one with the largest nucleus is its match and gives its
type, the others count as `extra_in_box`. A predicted cell whose box centre lies in no true box
is a *false cell* (a red cell, a platelet or a stain blob taken for a white cell; the fields
hold every white cell typed, as bccd_fields does). A field is *exactly one* when it has as many
predicted cells as true ones and all are found. *Type right* counts a missed cell as wrong, so
it never exceeds *found*.
"""

import dataclasses
from typing import Sequence

from wcsegnet_jax.cells import cells
from wcsegnet_jax.data import image_files
from wcsegnet_jax.data import typed_fields
from wcsegnet_jax.inference import fields as fields_lib
from wcsegnet_jax.model import decoding
from wcsegnet_jax.model import metrics

MISSED = 'missed'


@dataclasses.dataclass
class FieldOutcome:
  """One field's predicted cells matched to its typed ones."""

  file: str
  true_types: list[str]
  matched_types: list[str | None]  # per true cell: the type of its match, None if missed
  matched_confidence: list[float | None]  # and the confidence of that type
  false_cells: int
  # Of those, the ones a differential counts (`cells.not_counted_reasons`: not cut by the image
  # border, not too small or misshapen); None where not judged.
  false_counted: int | None
  extra_in_box: int
  predicted_cells: int
  scale: float


def _box_centre(cell: cells.Cell) -> tuple[float, float]:
  x0, y0, x1, y1 = cell.bbox
  return (x0 + x1) / 2, (y0 + y1) / 2


def _inside_boxes(
  field: typed_fields.TypedField, found: Sequence[cells.Cell]
) -> list[list[cells.Cell]]:
  """Per true cell: the found cells whose box centre lies in its box."""
  return [[c for c in found if truth.holds(*_box_centre(c))] for truth in field.cells]


def matched_cells(
  field: typed_fields.TypedField, found: Sequence[cells.Cell]
) -> list[cells.Cell | None]:
  """Per true cell: its match among `found` (the largest nucleus of those inside its box), or
  None where it was missed."""
  return [_largest(cands) for cands in _inside_boxes(field, found)]


def _largest(candidates: Sequence[cells.Cell]) -> cells.Cell | None:
  return max(candidates, key=lambda c: c.nucleus_area_px) if candidates else None


def match_field(
  field: typed_fields.TypedField,
  found: Sequence[cells.Cell],
  type_names: Sequence[str],
  scale: float = 1.0,
  rules: cells.CellRules | None = None,
) -> FieldOutcome:
  """Matches `found` (boxes in the field's own pixels, types by class id into `type_names`;
  sizes at the training scale, as `cells_at_field_scale` gives them) to the field's typed
  cells; with `rules` (the training scale's), false cells a differential counts are told
  apart."""
  inside = _inside_boxes(field, found)
  matched = [_largest(cands) for cands in inside]
  in_any = {id(c) for cands in inside for c in cands}
  return FieldOutcome(
    file=field.path.name,
    true_types=[c.cell_type for c in field.cells],
    matched_types=[None if m is None else type_names[m.class_id] for m in matched],
    matched_confidence=[None if m is None else float(m.confidence) for m in matched],
    false_cells=sum(id(c) not in in_any for c in found),
    false_counted=None
    if rules is None
    else sum(id(c) not in in_any and not cells.not_counted_reasons(c, rules) for c in found),
    extra_in_box=sum(len(cands) - 1 for cands in inside if cands),
    predicted_cells=len(found),
    scale=float(scale),
  )


def summarize(
  outcomes: Sequence[FieldOutcome], cell_types: Sequence[str], uncertain_below: float | None = None
) -> dict:
  """found, exactly_one, false_cells_per_field, type_right (all true cells), type_right_found
  (among found ones), per-type recall, a confusion table {true: {predicted or missed: n}} and
  the calibration of the found cells' confidences (`metrics.calibration`)."""
  pairs = [(t, m) for o in outcomes for t, m in zip(o.true_types, o.matched_types)]
  n_cells, n_fields = len(pairs), len(outcomes)
  found = [p for p in pairs if p[1] is not None]
  columns = list(cell_types) + [MISSED]
  true_types = [t for t in cell_types if any(p[0] == t for p in pairs)]
  confusion = {t: {c: 0 for c in columns} for t in true_types}
  for truth, match in pairs:
    confusion.setdefault(truth, {c: 0 for c in columns})
    key = MISSED if match is None else match
    confusion[truth][key] = confusion[truth].get(key, 0) + 1
  right = sum(t == m for t, m in pairs)
  calls = [
    (c, t == m)
    for o in outcomes
    for t, m, c in zip(o.true_types, o.matched_types, o.matched_confidence)
    if m is not None
  ]
  ratio = lambda a, b: a / b if b else None
  return {
    'fields': n_fields,
    'cells': n_cells,
    'found': ratio(len(found), n_cells),
    'exactly_one': ratio(
      sum(o.predicted_cells == len(o.true_types) and None not in o.matched_types for o in outcomes),
      n_fields,
    ),
    'false_cells_per_field': ratio(sum(o.false_cells for o in outcomes), n_fields),
    'false_counted_per_field': None
    if any(o.false_counted is None for o in outcomes)
    else ratio(sum(o.false_counted for o in outcomes), n_fields),
    'extra_in_box_per_field': ratio(sum(o.extra_in_box for o in outcomes), n_fields),
    'type_right': ratio(right, n_cells),
    'type_right_found': ratio(right, len(found)),
    'type_recall': {t: ratio(row.get(t, 0), sum(row.values())) for t, row in confusion.items()},
    'confusion': confusion,
    'calibration': metrics.calibration(
      [c for c, _ in calls], [r for _, r in calls], uncertain_below=uncertain_below
    ),
  }


def markdown(summary: dict, title: str) -> str:
  """The summary as a short markdown section: the headline figures, then the confusion."""
  fmt = lambda v: 'n/a' if v is None else f'{v:.3f}'
  lines = [
    f'### {title}',
    '',
    f'{summary["fields"]} fields, {summary["cells"]} typed cells',
    '',
    '| found | exactly one | false cells / field | type right | type right (found) |',
    '|---:|---:|---:|---:|---:|',
    f'| {fmt(summary["found"])} | {fmt(summary["exactly_one"])} | '
    f'{fmt(summary["false_cells_per_field"])} | {fmt(summary["type_right"])} | '
    f'{fmt(summary["type_right_found"])} |',
    '',
  ]
  if summary.get('false_counted_per_field') is not None:
    lines += [
      f'False cells a differential counts (not cut by the border, not too small or misshapen): '
      f'{fmt(summary["false_counted_per_field"])} per field.',
      '',
    ]
  calibration = summary.get('calibration') or {}
  if calibration.get('ece') is not None:
    line = f'Confidence: expected calibration error {calibration["ece"]:.3f}'
    if calibration.get('flagged') is not None:
      line += (
        f'; {calibration["flagged"]:.0%} of the found cells fall below '
        f'{calibration["uncertain_below"]:g} (flagged for review), typed right '
        f'{fmt(calibration["accuracy_flagged"])}, the others '
        f'{fmt(calibration["accuracy_kept"])}'
      )
    lines += [line + '.', '']
  confusion = summary['confusion']
  if confusion:
    columns = list(next(iter(confusion.values())))
    lines += [
      '| true \\ predicted | ' + ' | '.join(columns) + ' | recall |',
      '|---|' + '---:|' * (len(columns) + 1),
    ]
    for truth, row in confusion.items():
      lines.append(
        f'| {truth} | '
        + ' | '.join(str(row.get(c, 0)) for c in columns)
        + f' | {fmt(summary["type_recall"][truth])} |'
      )
  return '\n'.join(lines) + '\n'


def cells_at_field_scale(
  probs, table, rules: cells.CellRules, decode: str, scale: float
) -> list[cells.Cell]:
  """The cells of a field's probabilities at the training scale (`Segmenter.field`), their
  boxes and centres mapped back to the field's own pixels (divided by `scale`)."""
  found, _ = cells.find_cells(decoding.decode(probs, table, decode), probs, table, rules)
  back = lambda v: v / scale
  return [
    dataclasses.replace(
      c,
      bbox=tuple(int(round(back(v))) for v in c.bbox),
      centre=(back(c.centre[0]), back(c.centre[1])),
    )
    for c in found
  ]


def score_fields(
  segment,
  fields: Sequence[typed_fields.TypedField],
  scale_of,
  table,
  rules: cells.CellRules,
  decode: str,
  progress=None,
  typer=None,
) -> list[FieldOutcome]:
  """Segments each field with `segment` (a `segmenter.Segmenter`) at `scale_of(image)` and
  matches its cells to the typed ones; with `typer` (`cell_typing.CellTyper`), cells are typed
  by it, as predict types them."""
  outcomes = []
  for field in fields:
    image = image_files.read_rgb(field.path)
    scale = float(scale_of(image))
    probs = segment.field(image, scale)
    found = cells_at_field_scale(probs, table, rules, decode, scale)
    if typer is not None and found:
      found = typer.retyped(found, fields_lib.resize_field(image, scale), (scale, scale))
    outcomes.append(match_field(field, found, table.names, scale, rules))
    if progress:
      progress(outcomes[-1])
  return outcomes
