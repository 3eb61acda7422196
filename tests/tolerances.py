"""Tolerances that follow from the computation (docs/development.md, "How a tolerance is
chosen").

Two float32 results that sum the same n terms in different orders (other device counts, one
image at a time against the batch, another algorithm or library, another CPU's vector width)
differ by about eps32 * sqrt(n) times the terms' magnitude (rounding errors add up like a
random walk), at most eps32 * n times it. `float32_sums` is that bound with a safety factor;
where the code runs in float64 the tests compare in float64 instead, to `FLOAT64`.
"""

import math

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)  # 1.2e-7
EPS64 = float(np.finfo(np.float64).eps)  # 2.2e-16
# Relative agreement of float64 runs of one computation in different orders: ~1e-13 after
# eps64 * sqrt(n) for sums of up to 1e6 terms and a few orders of growth through layers;
# still 5 orders below float32 rounding (a float32 step left in the computation fails it).
FLOAT64 = 1e-10


def float32_sums(n: int, scale: float, k: float = 8.0) -> float:
  """Absolute bound on the difference of two float32 computations that sum n terms of
  magnitude up to `scale` in different orders: k * eps32 * sqrt(n) * scale."""
  return k * EPS32 * math.sqrt(n) * scale
