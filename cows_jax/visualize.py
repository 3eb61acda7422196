"""Small visualization helpers: the VOC palette, heatmaps, image grids, IoU tables and the
confusion-matrix figure. They make arrays; run_dir writes them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def voc_palette(n: int = 256) -> np.ndarray:
  """The PASCAL VOC colour map: bits of the index interleaved into R, G, B (255 -> 224,224,192)."""
  idx = np.arange(n)
  rgb = np.zeros((n, 3), np.int64)
  for j in range(8):
    for ch in range(3):
      rgb[:, ch] |= ((idx >> (3 * j + ch)) & 1) << (7 - j)
  return rgb.astype(np.uint8)


def colorize(label: np.ndarray) -> np.ndarray:
  """uint8 [H,W,3] VOC colours of a label map."""
  return voc_palette()[np.asarray(label, dtype=np.uint8)]


def heatmap(map01: np.ndarray, image: np.ndarray | None = None, alpha: float = 0.5) -> np.ndarray:
  """Jet-like colouring of a 0..1 map (blue low, red high), optionally blended over an RGB image.

  Values are clipped to 0..1 and NaN shows as 0, so raw maps never crash a debug dump.
  """
  x = np.clip(np.nan_to_num(np.asarray(map01, dtype=np.float64)), 0.0, 1.0)
  if x.ndim != 2:
    raise ValueError(f'map must be [H,W], got shape {x.shape}')
  centers = np.array([0.75, 0.5, 0.25])  # where R, G, B peak along the 0..1 axis
  color = np.clip(1.5 - np.abs(4.0 * (x[..., None] - centers)), 0.0, 1.0) * 255.0
  if image is not None:
    image = np.asarray(image)
    if image.shape != (*x.shape, 3):
      raise ValueError(f'image shape {image.shape} != map shape {x.shape} + (3,)')
    color = (1.0 - alpha) * image + alpha * color
  return np.round(color).astype(np.uint8)


def _title_height(font: ImageFont.ImageFont | ImageFont.FreeTypeFont, titles: Sequence[str]) -> int:
  draw = ImageDraw.Draw(Image.new('RGB', (1, 1)))
  return max(draw.textbbox((0, 0), t or ' ', font=font)[3] for t in titles) + 4


def make_grid(
  rows: Sequence[Sequence[np.ndarray]],
  titles: Sequence[str] | None = None,
  gap: int = 4,
  fill: int = 255,
) -> np.ndarray:
  """Tile uint8 [h,w,3] images into one uint8 image, ``gap`` pixels between cells.

  Every cell is max(h) x max(w) over all images (smaller images sit top-left). ``titles`` are
  column headers drawn above the first row. Size without titles:
  (R*cell_h + (R-1)*gap, C*cell_w + (C-1)*gap, 3) for R rows and C = the longest row.
  """
  images = [np.asarray(im) for row in rows for im in row]
  if not images:
    raise ValueError('make_grid needs at least one image')
  for im in images:
    if im.ndim != 3 or im.shape[2] != 3 or im.dtype != np.uint8:
      raise ValueError(f'grid images must be uint8 [H,W,3], got {im.dtype} {im.shape}')
  n_cols = max(len(row) for row in rows)
  if titles is not None and len(titles) != n_cols:
    raise ValueError(f'{len(titles)} titles for {n_cols} columns')
  cell_h = max(im.shape[0] for im in images)
  cell_w = max(im.shape[1] for im in images)
  font = ImageFont.load_default()
  top = _title_height(font, titles) if titles else 0
  height = top + len(rows) * cell_h + (len(rows) - 1) * gap
  width = n_cols * cell_w + (n_cols - 1) * gap
  grid = np.full((height, width, 3), fill, np.uint8)
  for r, row in enumerate(rows):
    for c, im in enumerate(row):
      y, x = top + r * (cell_h + gap), c * (cell_w + gap)
      grid[y : y + im.shape[0], x : x + im.shape[1]] = im
  if titles:
    canvas = Image.fromarray(grid)
    draw = ImageDraw.Draw(canvas)
    for c, title in enumerate(titles):
      draw.text((c * (cell_w + gap) + 2, 2), title, fill=(0, 0, 0), font=font)
    grid = np.asarray(canvas)
  return grid


def per_class_iou_markdown(
  class_names: Sequence[str], ious_by_column: Mapping[str, np.ndarray]
) -> str:
  """Markdown table: one row per class (background first), one column per evaluated output.

  IoUs come in 0..1 (as ``metrics.iou_from_confusion`` returns them) and print in percent with
  one decimal; NaN (class absent) prints '-'. The last row is the mIoU over non-NaN classes.
  """
  columns = {name: np.asarray(v, dtype=np.float64) for name, v in ious_by_column.items()}
  for name, v in columns.items():
    if v.shape != (len(class_names),):
      raise ValueError(f'column {name!r} has shape {v.shape}, expected ({len(class_names)},)')

  def cell(x: float) -> str:
    return '-' if np.isnan(x) else f'{100.0 * x:.1f}'

  def mean(v: np.ndarray) -> float:
    return float(np.nanmean(v)) if (~np.isnan(v)).any() else float('nan')

  lines = [
    '| class | ' + ' | '.join(columns) + ' |',
    '|---|' + '---:|' * len(columns),
  ]
  for i, name in enumerate(class_names):
    lines.append(f'| {name} | ' + ' | '.join(cell(v[i]) for v in columns.values()) + ' |')
  lines.append('| mIoU | ' + ' | '.join(cell(mean(v)) for v in columns.values()) + ' |')
  return '\n'.join(lines) + '\n'


def confusion_matrix_image(
  matrix: np.ndarray, class_names: Sequence[str], title: str = '', cell: int = 16
) -> np.ndarray:
  """uint8 RGB picture of a confusion matrix (rows ground truth, columns prediction), each row
  normalized to 1 (white 0, dark blue 1): where each class's pixels go. Rows are labelled
  'i name', columns 'i'; an invalid-prediction column (metrics' last) is left out."""
  n = len(class_names)
  cm = np.asarray(matrix, np.float64)
  if cm.ndim != 2 or cm.shape[0] != n or cm.shape[1] not in (n, n + 1):
    raise ValueError(f'matrix must be [{n}, {n}] or [{n}, {n + 1}], got {cm.shape}')
  totals = cm.sum(axis=1, keepdims=True)
  frac = np.divide(cm[:, :n], totals, out=np.zeros((n, n)), where=totals > 0)
  font = ImageFont.load_default()
  labels = [f'{i} {name}' for i, name in enumerate(class_names)]
  probe = ImageDraw.Draw(Image.new('RGB', (1, 1)))
  left = max(probe.textbbox((0, 0), t, font=font)[2] for t in labels) + 6
  line = _title_height(font, [title, '0'])
  top = 2 * line + 2
  canvas = Image.new(
    'RGB',
    (max(left + n * cell, probe.textbbox((0, 0), title, font=font)[2] + 4), top + n * cell + 2),
    'white',
  )
  draw = ImageDraw.Draw(canvas)
  draw.text((2, 2), title, fill=(0, 0, 0), font=font)
  for i in range(n):
    draw.text((2, top + i * cell + 2), labels[i], fill=(0, 0, 0), font=font)
    draw.text((left + i * cell + 2, line + 2), str(i), fill=(0, 0, 0), font=font)
    for j in range(n):
      v = frac[i, j]
      colour = (int(255 - 225 * v), int(255 - 185 * v), int(255 - 95 * v))
      x, y = left + j * cell, top + i * cell
      draw.rectangle((x, y, x + cell - 2, y + cell - 2), fill=colour)
  return np.asarray(canvas)
