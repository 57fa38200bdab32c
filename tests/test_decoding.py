"""Decoding probabilities into label maps: the paper's argmax and the part-first rule."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wcsegnet_jax.core import classes
from wcsegnet_jax.model import decoding

PAPER = classes.PAPER_TABLE  # 0 bg, 1 neut, 2 baso, 3 lymph
WITH_CYTOPLASM = classes.class_table(('neutrophil', 'lymphocyte'), cytoplasm=True)  # 3 = cyto


def random_probs(shape, seed=0):
  logits = np.random.default_rng(seed).normal(size=shape).astype(np.float32) * 2
  return np.asarray(jax.nn.softmax(logits, axis=-1))


def test_argmax_is_the_most_probable_class():
  probs = random_probs((5, 7, 4))
  np.testing.assert_array_equal(decoding.decode(probs, PAPER, 'argmax'), probs.argmax(-1))


def test_a_sure_nucleus_of_an_unsure_type_is_a_nucleus_by_part():
  probs = np.array(
    [
      [0.4, 0.3, 0.0, 0.3],  # nucleus 0.6: argmax says background
      [0.4, 0.1, 0.2, 0.3],  # nucleus 0.6, its most probable type lymphocyte
      [0.7, 0.1, 0.1, 0.1],  # background either way
      [0.5, 0.5, 0.0, 0.0],
    ],  # a tie between parts goes to background
    np.float32,
  )
  np.testing.assert_array_equal(decoding.decode(probs, PAPER, 'argmax'), [0, 0, 0, 0])
  np.testing.assert_array_equal(decoding.decode(probs, PAPER, 'by_part'), [1, 3, 0, 0])


def test_cytoplasm_is_a_part_of_its_own():
  probs = np.array(
    [
      [0.30, 0.25, 0.15, 0.30],  # nucleus 0.40 beats background and cytoplasm
      [0.20, 0.20, 0.15, 0.45],  # cytoplasm 0.45 beats nucleus 0.35
      [0.40, 0.10, 0.10, 0.40],
    ],  # background and cytoplasm tie: background
    np.float32,
  )
  np.testing.assert_array_equal(decoding.decode(probs, WITH_CYTOPLASM, 'by_part'), [1, 3, 0])


@pytest.mark.parametrize('table', [PAPER, WITH_CYTOPLASM], ids=['paper', 'cytoplasm'])
def test_rules_agree_where_one_class_holds_most_of_the_probability(table):
  probs = random_probs((64, 64, table.num_classes), seed=1)
  sure = probs.max(-1) > 0.5
  by_part = decoding.decode(probs, table, 'by_part')
  np.testing.assert_array_equal(by_part[sure], probs.argmax(-1)[sure])
  # And by_part only ever trades background (or cytoplasm) for a nucleus or back, never types.
  nucleus = np.isin(by_part, table.nucleus_ids)
  argmax = probs.argmax(-1)
  typed = nucleus & np.isin(argmax, table.nucleus_ids)
  np.testing.assert_array_equal(by_part[typed], argmax[typed])


@pytest.mark.parametrize('rule', decoding.RULES)
def test_numpy_and_jitted_jax_decode_alike(rule):
  probs = random_probs((3, 16, 16, WITH_CYTOPLASM.num_classes), seed=2)
  on_host = decoding.decode(probs, WITH_CYTOPLASM, rule)
  in_jit = jax.jit(lambda p: decoding.decode(p, WITH_CYTOPLASM, rule))(jnp.asarray(probs))
  assert isinstance(on_host, np.ndarray) and on_host.dtype == np.int32
  np.testing.assert_array_equal(np.asarray(in_jit), on_host)


def test_unknown_rule_is_named():
  with pytest.raises(ValueError, match="'max'"):
    decoding.decode(random_probs((2, 4)), PAPER, 'max')
