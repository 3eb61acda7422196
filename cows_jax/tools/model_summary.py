"""`cows-jax summary --config FILE`: each trained stage's model, its parameter count and its
forward FLOPs per image, from the config alone (nothing is trained, loaded or compiled: the
counts come from shapes and XLA's cost analysis of the lowered forward pass)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cows_jax.models import from_config

CONSOLE = {'width': 140, 'force_terminal': False, 'no_color': True}  # plain text tables.


def count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def forward_flops(fn, *args) -> float:
  """FLOPs XLA counts for one call of `fn` on abstract `args` (lowered, not compiled)."""
  cost = jax.jit(fn).lower(*args).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost['flops'])


def _report(title, model, variables, flops, note, table) -> str:
  params = count(variables['params'])
  fixed = {k: count(v) for k, v in variables.items() if k != 'params'}
  extra = ''.join(f' + {n / 1e6:.2f} M in {k!r}' for k, n in fixed.items())
  return (
    f'== {title}: {type(model).__name__}\n{table}\n'
    f'parameters: {params / 1e6:.2f} M trained{extra}\n'
    f'forward: {flops / 1e9:.2f} GFLOPs per image ({note})\n'
  )


def classifier(cfg, depth: int) -> str:
  model = from_config.classifier(cfg)
  x = jax.ShapeDtypeStruct((1, cfg.input.size, cfg.input.size, 3), jnp.float32)
  v = jax.eval_shape(model.init, jax.random.key(0), x, x)
  flops = forward_flops(lambda v, a, b: model.apply(v, a, b), v, x, x) / 2
  z = jnp.zeros(x.shape, x.dtype)
  table = nn.tabulate(model, jax.random.key(0), depth=depth, console_kwargs=CONSOLE)(z, z)
  return _report(
    'stage 1 classify', model, v, flops, f'{cfg.input.size} px, half of an image pair', table
  )


def segmenter(cfg, depth: int) -> str:
  model = from_config.segmenter(cfg)
  size = cfg.segment.crop_size
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  v = jax.eval_shape(model.init, jax.random.key(0), x)
  flops = forward_flops(model.apply, v, x)
  table = nn.tabulate(model, jax.random.key(0), depth=depth, console_kwargs=CONSOLE)(
    jnp.zeros(x.shape, x.dtype)
  )
  name = f'{cfg.segment.backbone}-{cfg.segment.head}, {cfg.data.num_classes + 1} classes'
  return _report(f'stage 3 segment ({name})', model, v, flops, f'{size} px training crop', table)


def run(cfg, depth: int = 2) -> str:
  """The summary text of every trained model of the run."""
  return '\n'.join((classifier(cfg, depth), segmenter(cfg, depth)))
