"""`cows-jax bench conv`: XLA's convolution gradients against models/conv.py's, for every
convolution shape the models use, and the table models/conv.py keeps.

The shapes are read off the traced models: the classifier's training step (the pair, the
flip, the 0.75x and 2x self views) and the segmenter's forward at its crop size. For each
shape it times, jitted on random arrays, the forward convolution, the input gradient (XLA's
and, for strided convolutions, conv.input_grad's phases) and the kernel gradient (XLA's and
conv.kernel_grad in both layouts at a few block sizes), in interleaved rounds (the minimum
over rounds: a shared machine's noise only adds). A method replaces XLA's only when it is at
least `--margin` faster. It prints one line per shape and the TABLE literal to paste into
models/conv.py.
"""

import argparse
import json
import time

import jax
import jax.extend.core as jax_core
import jax.numpy as jnp
import numpy as np

from cows_jax.configs.defaults import paper_defaults
from cows_jax.models import conv, from_config

BLOCK_PIXELS = (1024, 4096, 16384)  # output pixels per kernel_grad block tried (and all).


HELP = "conv gradients: XLA's and models/conv.py's"


def _subjaxprs(params):
  for v in params.values():
    for item in v if isinstance(v, (list, tuple)) else (v,):
      if isinstance(item, jax_core.ClosedJaxpr):
        yield item.jaxpr
      elif isinstance(item, jax_core.Jaxpr):
        yield item


def conv_shapes(jaxpr) -> list[tuple]:
  """conv.shape_key of every 2-D NHWC/HWIO convolution in a jaxpr (nested ones included), in
  order of appearance, without repeats."""
  keys = []

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == 'conv_general_dilated':
        p = eqn.params
        lhs, rhs = (v.aval.shape for v in eqn.invars)
        dn = p['dimension_numbers']
        nhwc = (dn.lhs_spec, dn.rhs_spec, dn.out_spec) == ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))
        if len(lhs) == 4 and nhwc and p['feature_group_count'] == 1:
          key = conv.shape_key(
            lhs,
            rhs,
            tuple(p['window_strides']),
            tuple(tuple(x) for x in p['padding']),
            tuple(p['rhs_dilation']),
          )
          if key not in keys:
            keys.append(key)
      for sub in _subjaxprs(eqn.params):
        walk(sub)

  walk(jaxpr)
  return keys


def classifier_shapes(cfg, batch: int, self_views) -> list[tuple]:
  """The convolutions of one classifier training step: `batch` pairs at input.size."""
  model = from_config.classifier(cfg)
  variables = from_config.abstract_variables(model, cfg)
  x = jax.ShapeDtypeStruct((batch, cfg.input.size, cfg.input.size, 3), jnp.float32)
  fn = lambda v, a, b: model.apply(
    v, a, b, tuple(self_views), train=True, method=model.training_scores, mutable=True
  )
  return conv_shapes(jax.make_jaxpr(fn)(variables, x, x).jaxpr)


def segmenter_shapes(cfg, batch: int) -> list[tuple]:
  """The convolutions of the segmenter on `batch` crops of segment.crop_size."""
  model = from_config.segmenter(cfg)
  variables = from_config.abstract_variables(model, cfg)
  size = cfg.segment.crop_size
  x = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
  return conv_shapes(jax.make_jaxpr(lambda v, x: model.apply(v, x))(variables, x).jaxpr)


def unpack(key):
  """(x shape, kernel shape, strides, padding, dilation) of a conv.shape_key."""
  n, h, w, cin, cout, kh, kw, sh, sw, dh, dw, pt, pb, pl, pr = key
  return (n, h, w, cin), (kh, kw, cin, cout), (sh, sw), ((pt, pb), (pl, pr)), (dh, dw)


def candidates(key) -> dict:
  """{name: plan piece} of the input and kernel gradient methods to time for a shape."""
  x_shape, w_shape, strides, padding, dilation = unpack(key)
  ho = conv.output_size(x_shape[1], w_shape[0], strides[0], padding[0], dilation[0])
  wo = conv.output_size(x_shape[2], w_shape[1], strides[1], padding[1], dilation[1])
  dx = ['xla']
  if any(s > 1 for s in strides) and conv.input_grad_supported(strides, dilation):
    dx.append('conv')
  rows = sorted({min(ho, max(1, p // (x_shape[0] * wo))) for p in BLOCK_PIXELS} | {ho})
  dw = [('xla', 0)] + [(layout, r if r < ho else 0) for layout in ('cf', 'cl') for r in rows]
  return {'dx': dx, 'dw': dw}


def _time(fn, args, rounds: int) -> list[float]:
  """Seconds of each call; the first (compile) call is not timed."""
  jax.block_until_ready(fn(*args))
  out = []
  for _ in range(rounds):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    out.append(time.perf_counter() - start)
  return out


def measure(key, rounds: int = 3, seed: int = 0) -> dict:
  """Milliseconds (minimum over interleaved rounds) of the forward and of every candidate."""
  x_shape, w_shape, strides, padding, dilation = unpack(key)
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
  w = jnp.asarray(rng.normal(size=w_shape), jnp.float32)
  fwd = jax.jit(lambda x, w: conv._lax_conv(x, w, strides, padding, dilation))
  g = jnp.asarray(rng.normal(size=fwd(x, w).shape), jnp.float32)

  def xla_vjp(which):
    def f(x, w, g):
      return jax.vjp(lambda x, w: conv._lax_conv(x, w, strides, padding, dilation), x, w)[1](g)[
        which
      ]

    return jax.jit(f)

  fns = {'fwd': (fwd, (x, w))}
  cands = candidates(key)
  for name in cands['dx']:
    f = xla_vjp(0)
    if name == 'conv':
      f = jax.jit(lambda x, w, g: conv.input_grad(g, w, x.shape, strides, padding, dilation))
    fns[f'dx {name}'] = (f, (x, w, g))
  for layout, rows in cands['dw']:
    f = xla_vjp(1)
    if layout != 'xla':
      f = jax.jit(
        lambda x, w, g, layout=layout, rows=rows: conv.kernel_grad(
          x, g, w.shape[:2], strides, padding, dilation, rows, layout
        )
      )
    fns[f'dw {layout} {rows}'] = (f, (x, w, g))
  times = {name: [] for name in fns}
  for _ in range(rounds):
    for name, (f, args) in fns.items():
      times[name] += _time(f, args, 1)
  return {name: 1e3 * min(t) for name, t in times.items()}


def choose(ms: dict, margin: float, min_saving_ms: float) -> conv.Plan:
  """The fastest method of each gradient; XLA's unless another beats it by `margin` and by
  `min_saving_ms` (below that, the difference is timer noise)."""

  def better(name, xla):
    return ms[name] * (1 + margin) < ms[xla] and ms[name] + min_saving_ms < ms[xla]

  dx = min((k for k in ms if k.startswith('dx ')), key=ms.get)
  dx = dx if better(dx, 'dx xla') else 'dx xla'
  dw = min((k for k in ms if k.startswith('dw ')), key=ms.get)
  dw = dw if better(dw, 'dw xla 0') else 'dw xla 0'
  _, layout, rows = dw.split()
  return conv.Plan(dx.split()[1], layout, int(rows))


def _workload_config(args):
  cfg = paper_defaults()
  cfg.input.size = args.size
  cfg.model.width = args.width
  cfg.data.num_classes = args.classes
  cfg.segment.backbone, cfg.segment.head = args.backbone, args.head
  cfg.segment.crop_size = args.crop_size
  return cfg


def model_shapes(args) -> list[tuple[str, tuple]]:
  """(workload, shape key) of every convolution the benchmarked workloads run."""
  cfg = _workload_config(args)
  views = ('flip', 0.75, 2.0) if args.views == 'full' else ()
  out, seen = [], set()
  workloads = []
  if 'classify' in args.models:
    workloads.append(('classify', classifier_shapes(cfg, args.batch, views)))
  if 'segment' in args.models:
    workloads.append(('segment', segmenter_shapes(cfg, args.segment_batch)))
  for name, keys in workloads:
    for key in keys:
      if key not in seen:
        seen.add(key)
        out.append((name, key))
  return out


def _describe(key) -> str:
  n, h, w, cin, cout, kh, kw, sh, _, dh, *_ = key
  return f'{n}x{h}x{w} {cin:>4}->{cout:<4} {kh}x{kw} s{sh} d{dh}'


def run(args) -> None:
  shapes = model_shapes(args)
  print(
    f'bench conv: {len(shapes)} convolution shapes ({", ".join(args.models)}); classifier '
    f'{args.size} px x {args.batch} pairs, views {args.views}; segmenter {args.backbone}-'
    f'{args.head} {args.crop_size} px x {args.segment_batch}; width {args.width}; '
    f'{args.rounds} rounds; device {jax.devices()[0]}'
  )
  print(
    f'{"model":8}  {"shape (N x H x W, Cin->Cout, kernel)":38}  {"fwd ms":>7}  {"dx xla":>7}  '
    f'{"dx ours":>7}  {"dw xla":>7}  {"dw ours":>7}  {"before":>7}  {"after":>7}  plan'
  )
  table, rows = {}, []
  total_before = total_after = 0.0
  for name, key in shapes:
    ms = measure(key, args.rounds)
    plan = choose(ms, args.margin, args.min_saving_ms)
    if plan != conv.XLA:
      table[key] = plan
    dx_ours = min((v for k, v in ms.items() if k.startswith('dx ') and k != 'dx xla'), default=None)
    dw_ours = min(v for k, v in ms.items() if k.startswith('dw ') and k != 'dw xla 0')
    before = ms['fwd'] + ms['dx xla'] + ms['dw xla 0']
    after = ms['fwd'] + ms[f'dx {plan.dx}'] + ms[f'dw {plan.dw} {plan.rows}']
    total_before, total_after = total_before + before, total_after + after
    dx_text = f'{dx_ours:7.1f}' if dx_ours is not None else f'{"-":>7}'
    print(
      f'{name:8}  {_describe(key):38}  {ms["fwd"]:7.1f}  {ms["dx xla"]:7.1f}  {dx_text}  '
      f'{ms["dw xla 0"]:7.1f}  {dw_ours:7.1f}  {before:7.1f}  {after:7.1f}  '
      f'{plan.dx}/{plan.dw}/{plan.rows}',
      flush=True,
    )
    rows.append({'model': name, 'key': key, 'ms': ms, 'plan': plan._asdict()})
  print(
    f'sum over shapes (each once) of forward + both gradients: XLA {total_before:.0f} ms, '
    f'with the plans {total_after:.0f} ms ({total_before / total_after:.2f}x)'
  )
  print('TABLE = {')
  for key, plan in table.items():
    print(f'  {key}: Plan{tuple(plan)},  # {_describe(key)}')
  print('}')
  print(json.dumps({'bench': 'conv', 'args': vars(args), 'rows': rows}))


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument(
    '--models',
    type=lambda t: tuple(t.split(',')),
    default=('classify', 'segment'),
    help='comma list of classify, segment',
  )
  parser.add_argument('--size', type=int, default=256, help='classifier input size')
  parser.add_argument('--batch', type=int, default=1, help='classifier pairs per step')
  parser.add_argument('--views', choices=('pair', 'full'), default='full')
  parser.add_argument('--width', type=float, default=1.0, help='channel multiplier')
  parser.add_argument('--classes', type=int, default=20)
  parser.add_argument('--backbone', choices=('resnet101', 'vgg16'), default='resnet101')
  parser.add_argument('--head', choices=('largefov', 'aspp'), default='largefov')
  parser.add_argument('--crop_size', type=int, default=321, help='segmenter crop size')
  parser.add_argument('--segment_batch', type=int, default=1, help='segmenter crops per step')
  parser.add_argument('--rounds', type=int, default=3, help='timed calls of each method')
  parser.add_argument(
    '--margin', type=float, default=0.1, help='how much faster than XLA a method must be'
  )
  parser.add_argument(
    '--min_saving_ms', type=float, default=0.5, help='and by how many milliseconds at least'
  )


def main(argv) -> int:
  parser = argparse.ArgumentParser(prog='cows-jax bench conv', description=__doc__.split('\n')[0])
  add_arguments(parser)
  run(parser.parse_args(argv))
  return 0


if __name__ == '__main__':
  import sys

  raise SystemExit(main(sys.argv[1:]))
