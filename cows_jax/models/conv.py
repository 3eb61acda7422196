"""`Conv`: flax's nn.Conv whose kernel gradient on the CPU is one matmul per kernel tap.

XLA's CPU backend computes a convolution's kernel gradient as a convolution with the
activations as the kernel, which is slow when the image is large: 3x3, 128 -> 128 channels,
2x128x128 inputs take 1,445 ms against 157 ms forward (PyTorch does forward and both
gradients in 474 ms); one matmul per tap takes 344 ms. On small images XLA's own is as fast
or faster (measured, forward plus both gradients: 1.8x to 2.8x faster by taps at 128 px
and up, 0.4x to 1.3x at 96 px and below), hence TAPS_MIN_OUTPUT_PIXELS. The math is the
same (equal to float rounding); GPU and TPU keep XLA's own gradient.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

_NHWC = ('NHWC', 'HWIO', 'NHWC')
TAPS_MIN_OUTPUT_PIXELS = 128 * 128  # per image; smaller outputs keep XLA's CPU gradient.


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(x, w, strides, padding, dilation):
  return lax.conv_general_dilated(
    x, w, strides, padding, rhs_dilation=dilation, dimension_numbers=_NHWC
  )


def _conv_fwd(x, w, strides, padding, dilation):
  return _conv(x, w, strides, padding, dilation), (x, w)


def kernel_grad_by_taps(x, g, kernel_hw, strides, padding, dilation):
  """d(loss)/d(kernel) [kh, kw, Cin, Cout] of an NHWC/HWIO conv from its input x and output
  gradient g: for each tap (i, j), the strided input window it saw, contracted with g."""
  xp = jnp.pad(x, ((0, 0), *padding, (0, 0)))
  n, ho, wo, _ = g.shape
  taps = [
    [
      jnp.einsum(
        'nhwc,nhwd->cd',
        lax.slice(
          xp,
          (0, i * dilation[0], j * dilation[1], 0),
          (
            n,
            i * dilation[0] + strides[0] * (ho - 1) + 1,
            j * dilation[1] + strides[1] * (wo - 1) + 1,
            xp.shape[3],
          ),
          (1, strides[0], strides[1], 1),
        ),
        g,
      )
      for j in range(kernel_hw[1])
    ]
    for i in range(kernel_hw[0])
  ]
  return jnp.stack([jnp.stack(row) for row in taps]).astype(x.dtype)


def _conv_bwd(strides, padding, dilation, residuals, g):
  x, w = residuals
  conv = lambda x, w: lax.conv_general_dilated(
    x, w, strides, padding, rhs_dilation=dilation, dimension_numbers=_NHWC
  )
  _, vjp = jax.vjp(conv, x, w)
  dx, dw_xla = vjp(g)  # on the CPU, XLA drops the unused dw_xla.
  by_taps = lambda x, g: kernel_grad_by_taps(x, g, w.shape[:2], strides, padding, dilation)
  dw = lax.platform_dependent(x, g, cpu=by_taps, default=lambda x, g: dw_xla)
  return dx, dw.astype(w.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)


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
  this project's models with large outputs take the tap gradient; anything else goes to lax
  unchanged."""
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
  if (
    not simple
    or _output_pixels(lhs.shape, rhs.shape, window_strides, padding, rhs_dilation)
    < TAPS_MIN_OUTPUT_PIXELS
  ):
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
  return _conv(
    lhs, rhs, tuple(window_strides), tuple(tuple(p) for p in padding), tuple(rhs_dilation or (1, 1))
  )


def _output_pixels(lhs_shape, rhs_shape, strides, padding, dilation) -> int:
  """Output height x width of an NHWC/HWIO convolution with explicit padding."""
  out = 1
  for axis in range(2):
    extent = lhs_shape[1 + axis] + sum(padding[axis])
    kernel = (rhs_shape[axis] - 1) * (dilation or (1, 1))[axis] + 1
    out *= (extent - kernel) // strides[axis] + 1
  return out


Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)
