"""From class probabilities to a label map: the rule evaluation, prediction and benchmarks share.

'argmax' (the paper): each pixel takes its most probable class.
'by_part': each pixel first takes its most probable part (background, nucleus, cytoplasm), a
part's probability being the sum over its classes, then the most probable class within it. The
two differ where a nucleus is sure but its type is not: background 0.4, neutrophil 0.3,
lymphocyte 0.3 is background by argmax, a nucleus (0.6) by part. Which type the nucleus is does
not decide whether it is one.
"""

import jax
import jax.numpy as jnp
import numpy as np

from wcsegnet_jax.core import classes
from wcsegnet_jax.core import config_keys

RULES = config_keys.CHOICES['eval.decode']


def decode(probs, table: classes.ClassTable, rule: str):
  """(..., C) probabilities -> (...) int32 class ids; jnp inside jit, numpy for numpy input."""
  xp = jnp if isinstance(probs, jax.Array) else np
  if rule == 'argmax':
    return xp.argmax(probs, axis=-1).astype(xp.int32)
  if rule != 'by_part':
    raise ValueError(f'unknown decoding rule {rule!r}; expected one of {RULES}')
  first, last = table.nucleus_ids[0], table.nucleus_ids[-1]  # the ids are consecutive
  nucleus = probs[..., first : last + 1]
  parts = [probs[..., classes.BACKGROUND], nucleus.sum(-1)]
  ids = [
    xp.zeros(probs.shape[:-1], xp.int32) + classes.BACKGROUND,
    xp.argmax(nucleus, axis=-1).astype(xp.int32) + first,
  ]
  if table.cytoplasm:
    parts.append(probs[..., table.cytoplasm_id])
    ids.append(xp.zeros(probs.shape[:-1], xp.int32) + table.cytoplasm_id)
  part = xp.argmax(xp.stack(parts, axis=-1), axis=-1)  # ties: background, then nucleus
  return xp.take_along_axis(xp.stack(ids, axis=-1), part[..., None], axis=-1)[..., 0]
