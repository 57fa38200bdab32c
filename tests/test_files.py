"""Atomic writes: the old file survives a failed write, and no temporary is left behind."""

import json

import pytest

from wcsegnet_jax.core import files


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
  path = tmp_path / 'metrics.json'
  files.write_json_atomic(path, {'a': 1})
  with pytest.raises(TypeError):
    files.write_bytes_atomic(path, 'text, not bytes')  # fails inside the write
  assert json.loads(path.read_text()) == {'a': 1}
  assert [p.name for p in tmp_path.iterdir()] == ['metrics.json']


def test_csv_and_text_round_trip(tmp_path):
  files.write_csv_atomic(tmp_path / 'a.csv', ('x', 'y'), [(1, 'b'), (2, 'c')])
  assert (tmp_path / 'a.csv').read_text() == 'x,y\n1,b\n2,c\n'
  files.write_text_atomic(tmp_path / 'a.txt', 'hello')
  assert (tmp_path / 'a.txt').read_text() == 'hello'
