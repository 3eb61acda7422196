"""Image transforms in numpy, run inside grain workers (no framework tensors).

Color jitter follows torchvision's ColorJitter: factors drawn uniformly around 1 (hue as a
shift in [-h, h] turns), the four adjustments applied in a random order.
"""

import numpy as np
from PIL import Image

from cows_jax.tta import normalize, resize_image  # noqa: F401  (shared with exports)


def resize_label(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Nearest-neighbour resize of a uint8 label map (keeps class ids and 255)."""
  if label.shape[:2] == tuple(size):
    return label
  return np.asarray(Image.fromarray(label).resize((size[1], size[0]), Image.NEAREST))


def _grayscale(x):
  return x @ np.array([0.299, 0.587, 0.114], np.float32)


def _rgb_to_hsv(rgb):
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  maxc, minc = rgb.max(-1), rgb.min(-1)
  v = maxc
  delta = maxc - minc
  s = np.where(maxc > 0, delta / np.maximum(maxc, 1e-12), 0.0)
  d = np.maximum(delta, 1e-12)
  rc, gc, bc = (maxc - r) / d, (maxc - g) / d, (maxc - b) / d
  h = np.where(maxc == r, bc - gc, np.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
  h = np.where(delta > 0, (h / 6.0) % 1.0, 0.0)
  return np.stack([h, s, v], -1)


def _hsv_to_rgb(hsv):
  h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
  i = np.floor(h * 6.0)
  f = h * 6.0 - i
  p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
  i = i.astype(np.int32) % 6
  choices = [
    np.stack(c, -1) for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))
  ]
  out = np.zeros_like(hsv)
  for k, c in enumerate(choices):
    out = np.where((i == k)[..., None], c, out)
  return out


def color_jitter(
  image: np.ndarray, rng: np.random.Generator, strength: tuple[float, float, float, float]
) -> np.ndarray:
  """torchvision ColorJitter(brightness, contrast, saturation, hue) on a uint8 image."""
  brightness, contrast, saturation, hue = strength
  x = image.astype(np.float32) / 255.0

  def adjust_brightness(x):
    return x * rng.uniform(1 - brightness, 1 + brightness)

  def adjust_contrast(x):
    mean = _grayscale(x).mean()
    return np.clip(mean + rng.uniform(1 - contrast, 1 + contrast) * (x - mean), 0, 1)

  def adjust_saturation(x):
    gray = _grayscale(x)[..., None]
    return np.clip(gray + rng.uniform(1 - saturation, 1 + saturation) * (x - gray), 0, 1)

  def adjust_hue(x):
    hsv = _rgb_to_hsv(x)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-hue, hue)) % 1.0
    return _hsv_to_rgb(hsv)

  ops = [adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue]
  for k in rng.permutation(len(ops)):
    x = np.clip(ops[k](x), 0, 1)
  return (x * 255.0 + 0.5).astype(np.uint8)


def random_scale_crop(image, label, rng, scales, discrete, crop, mirror, mean):
  """DeepLab training augmentation: random scale (one of `scales` when `discrete`, as the
  authors' Caffe data layer, else uniform between their extremes), mirror, crop; pad image
  with the mean colour and the label with 255 where the scaled image is smaller than the
  crop."""
  scale = float(rng.choice(scales)) if discrete else rng.uniform(min(scales), max(scales))
  h, w = image.shape[:2]
  size = (max(1, int(round(h * scale))), max(1, int(round(w * scale))))
  image, label = resize_image(image, size), resize_label(label, size)
  if mirror and rng.random() < 0.5:
    image, label = image[:, ::-1], label[:, ::-1]
  ph, pw = max(crop - size[0], 0), max(crop - size[1], 0)
  if ph or pw:
    fill = np.round(np.asarray(mean) * 255).astype(np.uint8)
    padded = np.empty((size[0] + ph, size[1] + pw, 3), np.uint8)
    padded[:] = fill
    padded[: size[0], : size[1]] = image
    image = padded
    label = np.pad(label, ((0, ph), (0, pw)), constant_values=255)
  y = rng.integers(0, image.shape[0] - crop + 1)
  x = rng.integers(0, image.shape[1] - crop + 1)
  return (
    np.ascontiguousarray(image[y : y + crop, x : x + crop]),
    np.ascontiguousarray(label[y : y + crop, x : x + crop]),
  )
