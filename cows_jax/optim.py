"""SGD as the reference trains it: weight decay added to the gradient, (Nesterov) momentum,
a global schedule, and a per-parameter learning-rate multiplier (PyTorch param groups)."""

from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util


def lr_multipliers(
  params,
  pretrained_groups,
  mult_pretrained_weight,
  mult_pretrained_bias,
  mult_new_weight,
  mult_new_bias,
):
  """Tree of floats matching params: pretrained (top-level name in `pretrained_groups`) or
  new layer, bias or weight."""
  flat = traverse_util.flatten_dict(params)
  mults = {}
  for path in flat:
    pretrained = path[0] in pretrained_groups
    bias = path[-1] == 'bias'
    if pretrained:
      mults[path] = mult_pretrained_bias if bias else mult_pretrained_weight
    else:
      mults[path] = mult_new_bias if bias else mult_new_weight
  return traverse_util.unflatten_dict(mults)


def scale_by_tree(multipliers) -> optax.GradientTransformation:
  """Multiplies each update leaf by its fixed multiplier."""
  return optax.stateless(
    lambda updates, params: jax.tree.map(lambda u, m: u * m, updates, multipliers)
  )


def sgd(
  schedule: Callable, momentum: float, nesterov: bool, weight_decay: float, multipliers
) -> optax.GradientTransformation:
  """PyTorch SGD semantics: wd on the gradient, momentum buffer without lr, lr x multiplier."""
  return optax.chain(
    optax.add_decayed_weights(weight_decay),
    optax.trace(decay=momentum, nesterov=nesterov),
    optax.scale_by_learning_rate(schedule),
    scale_by_tree(multipliers),
  )


def step_decay(base_lr, steps_per_epoch, decay_epochs, factor):
  """lr x factor at the start of each epoch in decay_epochs."""
  boundaries = {int(e * steps_per_epoch): factor for e in decay_epochs}
  return optax.piecewise_constant_schedule(base_lr, boundaries)


def with_warmup(schedule, warmup_steps: int):
  """`schedule`, scaled by a linear ramp from 1/warmup_steps to 1 over the first
  `warmup_steps` steps (none when 0)."""
  if warmup_steps <= 0:
    return schedule
  return lambda step: schedule(step) * jnp.minimum(1.0, (step + 1) / warmup_steps)


def poly(base_lr, total_steps, power):
  """DeepLab's poly schedule: base_lr * (1 - step/total)^power."""
  return optax.polynomial_schedule(base_lr, 0.0, power, total_steps)
