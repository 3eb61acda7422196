"""`Conv`: flax's nn.Conv with convolution gradients on the CPU at about forward speed.

XLA's CPU backend runs a forward convolution fast (its YNNPACK fusion, about oneDNN's rate),
and so the input gradient of a stride-1 convolution, which it emits as a forward convolution
of the output gradient with the flipped, transposed kernel. It is slow elsewhere:
- the kernel gradient is a convolution with the activations as the kernel (a window the size
  of the image, a 3x3 output): 1.3x to 19x the forward on the VGG layers of a 256 px step
  (3x to 8x on most of the large ones);
- the input gradient of a strided convolution is a convolution of the zero-dilated output
  gradient, which leaves YNNPACK (2x the forward for a 3x3 stride-2 conv).

Here, per convolution shape, the backward pass may instead take
- `kernel_grad`: the kernel gradient as blocked im2col matmuls: a block of `rows` output rows
  at a time, the input windows of its taps stacked into one [kh*kw*Cin, pixels] matrix
  ('cf', channels first) or [pixels, kh*kw*Cin] ('cl') and multiplied by the output
  gradient's block, accumulated over the blocks in a scan (memory: one block of windows, not
  every window of the image);
- `input_grad`: the input gradient as forward convolutions of the output gradient with the
  flipped, transposed kernel, one per stride phase for a strided convolution (its s*s
  sub-kernels), interleaved.

Which one a shape takes is measured, not guessed: `cows-jax bench conv` times XLA's and these
for every convolution shape the models use and prints the `TABLE` below; shapes not in it
follow `default_plan`, a rule read off those measurements. The math is the same (equal to
float rounding, tests/test_conv.py checks every shape); GPU and TPU keep XLA's own gradients
(lax.platform_dependent).
"""

import functools
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

_NHWC = ('NHWC', 'HWIO', 'NHWC')


class Plan(NamedTuple):
  """How the backward pass of one convolution shape runs on the CPU."""

  dx: str = 'xla'  # 'xla' | 'conv': input_grad.
  dw: str = 'xla'  # 'xla' | 'cf' | 'cl': kernel_grad with that layout.
  rows: int = 0  # output rows per kernel_grad block; 0: all at once.


XLA = Plan()  # XLA's own input and kernel gradients.
DX_METHODS = ('xla', 'conv')
DW_METHODS = ('xla', 'cf', 'cl')


def shape_key(lhs_shape, rhs_shape, strides, padding, dilation) -> tuple:
  """(N, H, W, Cin, Cout, kh, kw, stride h, stride w, dilation h, dilation w, padding
  top, bottom, left, right): what a plan depends on."""
  n, h, w, cin = lhs_shape
  kh, kw, _, cout = rhs_shape
  return (n, h, w, cin, cout, kh, kw, *strides, *dilation, *padding[0], *padding[1])


def _lax_conv(x, w, strides, padding, dilation):
  return lax.conv_general_dilated(
    x, w, strides, padding, rhs_dilation=dilation, dimension_numbers=_NHWC
  )


def output_size(size: int, kernel: int, stride: int, pad: tuple, dilation: int) -> int:
  return (size + pad[0] + pad[1] - (kernel - 1) * dilation - 1) // stride + 1


# --- kernel gradient ----------------------------------------------------------------------


def kernel_grad(x, g, kernel_hw, strides, padding, dilation, rows: int = 0, layout: str = 'cf'):
  """d(loss)/d(kernel) [kh, kw, Cin, Cout] of an NHWC/HWIO convolution from its input x and
  output gradient g, as blocked im2col matmuls over `rows` output rows at a time (0: one
  block). Accumulated in at least float32 (float64 inputs in float64), returned in x's
  dtype."""
  n, ho, wo, cout = g.shape
  cin = x.shape[3]
  acc = jnp.promote_types(x.dtype, jnp.float32)
  (kh, kw), (sh, sw), (dh, dw) = kernel_hw, strides, dilation
  rows = ho if rows <= 0 else min(rows, ho)
  blocks = -(-ho // rows)
  span = (rows - 1) * sh + (kh - 1) * dh + 1  # input rows one block of output rows reads.
  extra = (blocks - 1) * rows * sh + span - (x.shape[1] + sum(padding[0]))
  zero = jnp.zeros((), x.dtype)
  xp = lax.pad(
    x, zero, ((0, 0, 0), (padding[0][0], padding[0][1] + extra, 0), (*padding[1], 0), (0, 0, 0))
  )
  gp = jnp.pad(g, ((0, 0), (0, blocks * rows - ho), (0, 0), (0, 0)))
  cf = layout == 'cf'
  if cf:
    xp = jnp.transpose(xp, (3, 0, 1, 2))  # [Cin, N, Hp, Wp]
  row_axis = 2 if cf else 1

  def block(b):
    xb = lax.dynamic_slice_in_dim(xp, b * rows * sh, span, row_axis)
    gb = lax.dynamic_slice_in_dim(gp, b * rows, rows, 1).reshape(n * rows * wo, cout)
    taps = []
    for i in range(kh):
      for j in range(kw):
        start = [0] * 4
        start[row_axis], start[row_axis + 1] = i * dh, j * dw
        limit = list(xb.shape)
        limit[row_axis] = i * dh + (rows - 1) * sh + 1
        limit[row_axis + 1] = j * dw + (wo - 1) * sw + 1
        step = [1] * 4
        step[row_axis], step[row_axis + 1] = sh, sw
        taps.append(lax.slice(xb, start, limit, step))
    if cf:  # [kh*kw*Cin, pixels] @ [pixels, Cout]
      patches = jnp.concatenate(taps, 0).reshape(kh * kw * cin, n * rows * wo)
      dims = (((1,), (0,)), ((), ()))
    else:  # [pixels, kh*kw*Cin]^T @ [pixels, Cout]
      patches = jnp.concatenate(taps, 3).reshape(n * rows * wo, kh * kw * cin)
      dims = (((0,), (0,)), ((), ()))
    return lax.dot_general(patches, gb, dims, preferred_element_type=acc)

  if blocks == 1:
    dw_ = block(0)
  else:
    init = jnp.zeros((kh * kw * cin, cout), acc)
    dw_, _ = lax.scan(lambda acc, b: (acc + block(b), None), init, jnp.arange(blocks))
  return dw_.reshape(kh, kw, cin, cout).astype(x.dtype)


# --- input gradient -----------------------------------------------------------------------


def input_grad_supported(strides, dilation) -> bool:
  """input_grad handles any stride-1 convolution and strided ones without dilation."""
  return all(s == 1 for s in strides) or all(d == 1 for d in dilation)


def input_grad(g, w, x_shape, strides, padding, dilation):
  """d(loss)/d(input) [N, H, W, Cin] from the output gradient g: a forward convolution of g
  with the flipped kernel, input and output channels swapped. A stride-s convolution (no
  dilation) splits into s*s phases: the input pixels at t = s*q + r - pad read the taps
  r, r+s, ... of the kernel, so each phase is a stride-1 convolution with that sub-kernel;
  the phases are interleaved."""
  kh, kw = w.shape[:2]
  wt = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)  # [kh, kw, Cout, Cin]
  if all(s == 1 for s in strides):
    # Stride 1: output pixel o reads input o + i*d - pad, so input t gets g[t - i*d + pad].
    pads = [
      ((k - 1) * d - p[0], (k - 1) * d - p[1]) for k, d, p in zip((kh, kw), dilation, padding)
    ]
    return _lax_conv(g, wt, (1, 1), pads, dilation)
  if not input_grad_supported(strides, dilation):
    raise ValueError(f'input_grad: strides {strides} with dilation {dilation}')
  n, ho, wo, _ = g.shape
  (sh, sw), ((pt, _), (pl, _)) = strides, padding
  qh, qw = -(-(x_shape[1] + pt) // sh), -(-(x_shape[2] + pl) // sw)
  rows = []
  for rh in range(sh):
    cols = []
    for rw in range(sw):
      sub = w[rh::sh, rw::sw]  # taps r, r+s, ...: [Mh, Mw, Cin, Cout]
      mh, mw = sub.shape[:2]
      if mh == 0 or mw == 0:
        cols.append(jnp.zeros((n, qh, qw, x_shape[3]), g.dtype))
        continue
      # phase[q] = sum_m g[q - m] sub[m]: g padded by M-1 before, cut or padded to Q after.
      sub = jnp.flip(sub, (0, 1)).transpose(0, 1, 3, 2)
      pads = ((mh - 1, qh - ho), (mw - 1, qw - wo))
      cols.append(_lax_conv(g, sub, (1, 1), pads, (1, 1)))
    rows.append(jnp.stack(cols, 3))  # [N, Qh, Qw, sw, Cin]
  full = jnp.stack(rows, 2).reshape(n, qh * sh, qw * sw, x_shape[3])  # t + pad = s*q + r
  return full[:, pt : pt + x_shape[1], pl : pl + x_shape[2]]


# --- the custom gradient ------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv(x, w, strides, padding, dilation, plan):
  return _lax_conv(x, w, strides, padding, dilation)


def _conv_fwd(x, w, strides, padding, dilation, plan):
  return _conv(x, w, strides, padding, dilation, plan), (x, w)


def _conv_bwd(strides, padding, dilation, plan, residuals, g):
  x, w = residuals

  def xla(x, w, g):
    _, vjp = jax.vjp(lambda x, w: _lax_conv(x, w, strides, padding, dilation), x, w)
    return vjp(g)

  def cpu(x, w, g):
    dx_xla, dw_xla = xla(x, w, g)  # XLA drops whichever is not used.
    dx = dx_xla
    if plan.dx == 'conv':
      dx = input_grad(g, w, x.shape, strides, padding, dilation)
    dw = dw_xla
    if plan.dw != 'xla':
      dw = kernel_grad(x, g, w.shape[:2], strides, padding, dilation, plan.rows, plan.dw)
    return dx.astype(x.dtype), dw.astype(w.dtype)

  return lax.platform_dependent(x, w, g, cpu=cpu, default=xla)


_conv.defvjp(_conv_fwd, _conv_bwd)


# --- which plan -----------------------------------------------------------------------------

# Made by `cows-jax bench conv` (cows_jax/tools/bench_conv.py; margin 10% and 0.5 ms) on this
# project's 2-core CPU (Xeon, AVX-512; shared with other jobs), jax 0.10.2, in three runs:
# the classifier (`--models classify`: 256 px, 1 pair, views full, width 1), the segmenter
# (`--models segment`: ResNet-101 LargeFOV, 321 px crops, 1 per step), and the synthetic
# config's networks (`--size 64 --batch 8 --views pair --width 0.125 --backbone vgg16
# --crop_size 96 --segment_batch 8 --classes 10`). Keys are shape_key's: (N, H, W, Cin, Cout,
# kh, kw, strides, dilations, padding); XLA: its own gradients measured as fast (within the
# margin). docs/benchmarks.md has the timings.
TABLE: dict[tuple, Plan] = {
  # classifier training step, 256 px: the pair and the flip (N = 3), x0.75, x2.
  (3, 256, 256, 3, 64, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1): Plan('xla', 'cf', 1),
  (3, 256, 256, 64, 64, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1): Plan('xla', 'cf', 5),
  (3, 128, 128, 64, 128, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1): Plan('xla', 'cf', 2),
  (3, 128, 128, 128, 128, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1): Plan('xla', 'cl', 2),
  (3, 64, 64, 128, 256, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1): Plan('xla', 'cf', 5),
  (3, 64, 64, 256, 256, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1): Plan('xla', 'cf', 5),
  (3, 32, 32, 256, 512, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1): Plan('xla', 'cf', 10),
  (3, 32, 32, 512, 512, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1): Plan('xla', 'cl', 0),
  (3, 32, 32, 512, 512, 3, 3, 1, 1, 2, 2, 2, 2, 2, 2): Plan('xla', 'cl', 0),
  (1, 32, 32, 512, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0): XLA,
  (1, 32, 32, 512, 20, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0): Plan('xla', 'cf', 0),
  (1, 192, 192, 3, 64, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1): Plan('xla', 'cf', 0),
  (1, 192, 192, 64, 64, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1): Plan('xla', 'cf', 21),
  (1, 96, 96, 64, 128, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1): Plan('xla', 'cf', 10),
  (1, 96, 96, 128, 128, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1): Plan('xla', 'cf', 10),
  (1, 48, 48, 128, 256, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1): Plan('xla', 'cf', 0),
  (1, 48, 48, 256, 256, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1): Plan('xla', 'cl', 21),
  (1, 24, 24, 256, 512, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1): Plan('xla', 'cl', 0),
  (1, 24, 24, 512, 512, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1): XLA,
  (1, 24, 24, 512, 512, 3, 3, 1, 1, 2, 2, 2, 2, 2, 2): Plan('xla', 'cl', 0),
  (1, 24, 24, 512, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0): XLA,
  (1, 24, 24, 512, 20, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0): Plan('xla', 'cf', 0),
  (1, 512, 512, 3, 64, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1): Plan('xla', 'cf', 8),
  (1, 512, 512, 64, 64, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1): Plan('xla', 'cf', 2),
  (1, 256, 256, 64, 128, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1): Plan('xla', 'cl', 4),
  (1, 256, 256, 128, 128, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1): Plan('xla', 'cf', 4),
  (1, 128, 128, 128, 256, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1): Plan('xla', 'cf', 8),
  (1, 128, 128, 256, 256, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1): Plan('xla', 'cf', 8),
  (1, 64, 64, 256, 512, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1): Plan('xla', 'cf', 16),
  (1, 64, 64, 512, 512, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1): Plan('xla', 'cl', 16),
  (1, 64, 64, 512, 512, 3, 3, 1, 1, 2, 2, 2, 2, 2, 2): Plan('xla', 'cl', 16),
  (1, 64, 64, 512, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0): XLA,
  (1, 64, 64, 512, 20, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0): Plan('xla', 'cl', 0),
  # segmenter (ResNet-101, LargeFOV) training step, 321 px.
  (1, 321, 321, 3, 64, 7, 7, 2, 2, 1, 1, 3, 3, 3, 3): Plan('xla', 'cf', 25),
  (1, 81, 81, 64, 64, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0): Plan('xla', 'cf', 0),
  (1, 81, 81, 64, 64, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1): XLA,
  (1, 81, 81, 64, 256, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0): Plan('xla', 'cf', 0),
  (1, 81, 81, 256, 64, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0): Plan('xla', 'cf', 0),
  (1, 81, 81, 256, 128, 1, 1, 2, 2, 1, 1, 0, 0, 0, 0): Plan('conv', 'cl', 0),
  (1, 41, 41, 128, 128, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1): XLA,
  (1, 41, 41, 128, 512, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0): Plan('xla', 'cl', 0),
  (1, 81, 81, 256, 512, 1, 1, 2, 2, 1, 1, 0, 0, 0, 0): Plan('xla', 'cl', 0),
  (1, 41, 41, 512, 128, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0): Plan('xla', 'cl', 0),
  (1, 41, 41, 512, 256, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0): Plan('xla', 'cl', 0),
  (1, 41, 41, 256, 256, 3, 3, 1, 1, 2, 2, 2, 2, 2, 2): Plan('xla', 'cf', 0),
  (1, 41, 41, 256, 1024, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0): Plan('xla', 'cl', 0),
  (1, 41, 41, 512, 1024, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0): Plan('xla', 'cl', 0),
  (1, 41, 41, 1024, 256, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0): Plan('xla', 'cl', 0),
  (1, 41, 41, 1024, 512, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0): Plan('xla', 'cl', 0),
  (1, 41, 41, 512, 512, 3, 3, 1, 1, 4, 4, 4, 4, 4, 4): Plan('xla', 'cl', 24),
  (1, 41, 41, 512, 2048, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0): Plan('xla', 'cl', 0),
  (1, 41, 41, 1024, 2048, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0): Plan('xla', 'cl', 0),
  (1, 41, 41, 2048, 512, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0): Plan('xla', 'cl', 0),
  (1, 41, 41, 2048, 1024, 3, 3, 1, 1, 12, 12, 12, 12, 12, 12): Plan('xla', 'cl', 24),
  (1, 41, 41, 1024, 1024, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0): Plan('xla', 'cf', 0),
  (1, 41, 41, 1024, 21, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0): Plan('xla', 'cl', 0),
  # the synthetic config (64 px classifier, 96 px segmenter, width 0.125).
  (16, 64, 64, 3, 8, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1): XLA,
  (16, 64, 64, 8, 8, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1): XLA,
  (16, 32, 32, 8, 16, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1): XLA,
  (16, 32, 32, 16, 16, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1): XLA,
  (16, 16, 16, 16, 32, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1): XLA,
  (16, 16, 16, 32, 32, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1): XLA,
  (16, 8, 8, 32, 64, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1): XLA,
  (16, 8, 8, 64, 64, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1): XLA,
  (16, 8, 8, 64, 64, 3, 3, 1, 1, 2, 2, 2, 2, 2, 2): XLA,
  (8, 8, 8, 64, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0): XLA,
  (8, 8, 8, 64, 10, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0): XLA,
  (8, 96, 96, 3, 8, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1): XLA,
  (8, 96, 96, 8, 8, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1): XLA,
  (8, 48, 48, 8, 16, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1): XLA,
  (8, 48, 48, 16, 16, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1): XLA,
  (8, 24, 24, 16, 32, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1): XLA,
  (8, 24, 24, 32, 32, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1): XLA,
  (8, 12, 12, 32, 64, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1): XLA,
  (8, 12, 12, 64, 64, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1): XLA,
  (8, 12, 12, 64, 64, 3, 3, 1, 1, 2, 2, 2, 2, 2, 2): XLA,
  (8, 12, 12, 64, 128, 3, 3, 1, 1, 12, 12, 12, 12, 12, 12): XLA,
  (8, 12, 12, 128, 128, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0): Plan('xla', 'cl', 0),
  (8, 12, 12, 128, 11, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0): XLA,
}


def default_plan(key: tuple) -> Plan:
  """Shapes not in TABLE, by the rule the table's measurements follow: XLA's kernel gradient
  is as fast on small problems, the blocked im2col wins on large ones (by the kernel
  gradient's multiply-adds: from 10 MFLOP for a 1x1 conv, a plain matmul; from 1 GFLOP
  for a larger kernel, blocks of about 4,096 output pixels); the input gradient stays XLA's."""
  n, h, w, cin, cout, kh, kw, sh, sw, dh, dw, pt, pb, pl, pr = key
  ho, wo = output_size(h, kh, sh, (pt, pb), dh), output_size(w, kw, sw, (pl, pr), dw)
  flops = 2 * n * ho * wo * kh * kw * cin * cout
  if kh * kw == 1:
    return Plan('xla', 'cl', 0) if flops >= 1e7 else XLA
  if flops < 1e9:
    return XLA
  rows = max(1, 4096 // (n * wo))
  return Plan('xla', 'cf', rows if rows < ho else 0)


def plan_for(key: tuple) -> Plan:
  return TABLE[key] if key in TABLE else default_plan(key)


def conv_general_dilated(
  lhs,
  rhs,
  window_strides,
  padding,
  lhs_dilation=None,
  rhs_dilation=None,
  dimension_numbers=None,
  feature_group_count=1,
  batch_group_count=1,
  precision=None,
  preferred_element_type=None,
):
  """lax.conv_general_dilated's signature (what nn.Conv calls). The 2-D NHWC convolutions of
  this project's models take the plan of their shape; anything else goes to lax unchanged."""
  simple = (
    lhs.ndim == 4
    and all(isinstance(d, int) for d in lhs.shape)  # symbolic shapes (jax.export): XLA's.
    and not isinstance(padding, str)
    and feature_group_count == 1
    and batch_group_count == 1
    and precision is None
    and preferred_element_type is None
    and all(d == 1 for d in (lhs_dilation or (1, 1)))
    and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
  )
  if simple:
    strides = tuple(window_strides)
    pads = tuple(tuple(p) for p in padding)
    dilation = tuple(rhs_dilation or (1, 1))
    plan = plan_for(shape_key(lhs.shape, rhs.shape, strides, pads, dilation))
    if plan != XLA:
      return _conv(lhs, rhs, strides, pads, dilation, plan)
  return lax.conv_general_dilated(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation,
    rhs_dilation,
    dimension_numbers,
    feature_group_count,
    batch_group_count,
    precision,
    preferred_element_type,
  )


Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)
