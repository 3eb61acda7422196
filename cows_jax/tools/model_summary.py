"""`cows-jax summary --config FILE`: each trained stage's model, its parameters per module and
its forward FLOPs per image, from the config alone (nothing is trained, loaded or compiled: the
counts come from shapes, the tables from clu.parameter_overview, the FLOPs from XLA's cost
analysis of the lowered forward pass)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from clu import parameter_overview
from flax import traverse_util

from cows_jax.models import from_config


def count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@dataclasses.dataclass
class _Module:
  name: str
  parameters: int
  share: str


def table(params, depth: int) -> str:
  """The parameters of each module `depth` levels down (clu.parameter_overview's table; every
  tensor with its shape when depth is 0)."""
  if depth <= 0:
    return parameter_overview.get_parameter_overview(params, include_stats=False)
  groups: dict[str, int] = {}
  for path, leaf in traverse_util.flatten_dict(params).items():
    name = '/'.join(path[:depth])
    groups[name] = groups.get(name, 0) + int(np.prod(leaf.shape))
  total = sum(groups.values())
  rows = [_Module(k, n, f'{100 * n / total:.1f}%') for k, n in groups.items()]
  return parameter_overview.make_table(rows)


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
  return _report(
    'stage 1 classify',
    model,
    v,
    flops,
    f'{cfg.input.size} px, half of an image pair',
    table(v['params'], depth),
  )


def segmenter(cfg, depth: int) -> str:
  model = from_config.segmenter(cfg)
  size = cfg.segment.crop_size
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  v = jax.eval_shape(model.init, jax.random.key(0), x)
  flops = forward_flops(model.apply, v, x)
  name = f'{cfg.segment.backbone}-{cfg.segment.head}, {cfg.data.num_classes + 1} classes'
  return _report(
    f'stage 3 segment ({name})',
    model,
    v,
    flops,
    f'{size} px training crop',
    table(v['params'], depth),
  )


def run(cfg, depth: int = 2) -> str:
  """The summary text of every trained model of the run."""
  return '\n'.join((classifier(cfg, depth), segmenter(cfg, depth)))
