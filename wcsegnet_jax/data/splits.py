"""The deterministic train/test split, stratified by cell type."""

import collections
import zlib
from typing import Sequence

import numpy as np

from wcsegnet_jax.data import records as records_lib


def stratified_split(
  records: Sequence[records_lib.RawRecord], test_fraction: float, seed: int
) -> dict[str, list[records_lib.RawRecord]]:
  """Splits each cell type on its own: round(test_fraction * n) of its images go to test.

  Depends only on the file ids, the types, the fraction and the seed (not on listing order), so
  anyone can recompute which id is in which split. A type with a single image (the Jiangxi set
  has one basophil) stays in train.
  """
  by_type = collections.defaultdict(list)
  for r in records:
    by_type[r.cell_type].append(r)
  split = {'train': [], 'test': []}
  for cell_type in sorted(by_type):
    group = sorted(by_type[cell_type], key=lambda r: r.file_id)
    order = np.random.default_rng([seed, zlib.crc32(cell_type.encode())]).permutation(len(group))
    n_test = int(round(test_fraction * len(group))) if len(group) > 1 else 0
    split['test'] += [group[j] for j in order[:n_test]]
    split['train'] += [group[j] for j in order[n_test:]]
  for name in split:
    split[name].sort(key=lambda r: r.file_id)
  return split
