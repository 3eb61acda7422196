"""Losses of both trained stages: multilabel soft margin for the classifier, pixel
cross-entropy with an ignore label for the segmenter."""

import jax
import jax.numpy as jnp
import optax


def multilabel_soft_margin(logits, targets, weights=None):
  """PyTorch's MultiLabelSoftMarginLoss: mean over classes, then over the batch; with
  `weights` [B] (0 for the padding of a batch), the weighted mean over the batch."""
  per_class = optax.sigmoid_binary_cross_entropy(logits, targets.astype(logits.dtype))
  if weights is None:
    return jnp.mean(per_class)
  return jnp.sum(jnp.mean(per_class, axis=-1) * weights) / jnp.maximum(jnp.sum(weights), 1e-9)


def pair_targets(labels_m, labels_n):
  """Targets of a pair: common classes (l_m AND l_n) and the two differences."""
  common = labels_m * labels_n
  return common, labels_m - common, labels_n - common


def _pair_loss(logits_m, logits_n, targets_m, targets_n, weights=None):
  """One soft margin loss over the 2B images of a pair batch, as the reference computes it on
  the concatenated scores: the mean of the m-side and n-side losses."""
  return multilabel_soft_margin(
    jnp.concatenate([logits_m, logits_n]),
    jnp.concatenate([targets_m, targets_n]),
    None if weights is None else jnp.concatenate([weights, weights]),
  )


def coattention_losses(scores, labels_m, labels_n, use_contrastive, weights=None):
  """The three losses of a pair batch (paper.md, reference training step).

  single and co-attention: one loss over both sides. Contrastive: one loss per side, each
  counted only when `use_contrastive` (a traced bool: the epoch gate) and that side has a
  non-empty difference somewhere in the batch. `weights` [B]: 0 for the padding of a batch.
  """
  common, diff_m, diff_n = pair_targets(labels_m, labels_n)
  single = _pair_loss(scores.single_m, scores.single_n, labels_m, labels_n, weights)
  co = _pair_loss(scores.co_m, scores.co_n, common, common, weights)
  real = True if weights is None else (weights > 0)[:, None]
  con_m = jnp.where(
    use_contrastive & jnp.any((diff_m > 0) & real),
    multilabel_soft_margin(scores.con_m, diff_m, weights),
    0.0,
  )
  con_n = jnp.where(
    use_contrastive & jnp.any((diff_n > 0) & real),
    multilabel_soft_margin(scores.con_n, diff_n, weights),
    0.0,
  )
  return {'single': single, 'coattention': co, 'contrastive': con_m + con_n}


def self_pair_losses(scores_by_view, labels_m, weights=None):
  """Single and co-attention losses of m's self-pairs: target l_m on both sides, no
  contrastive loss (a view shares every class with m). Zero when there are no views."""
  single = co = jnp.zeros((), jnp.float32)
  for scores in scores_by_view.values():
    single += _pair_loss(scores.single_m, scores.single_n, labels_m, labels_m, weights)
    co += _pair_loss(scores.co_m, scores.co_n, labels_m, labels_m, weights)
  return {'self_single': single, 'self_coattention': co}


def pixel_cross_entropy(logits, labels, ignore_index=255):
  """Mean softmax cross-entropy over non-ignored pixels; logits [B,H,W,C], labels [B,H,W].
  In at least float32 (float64 logits stay float64)."""
  valid = labels != ignore_index
  safe = jnp.where(valid, labels, 0)
  wide = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
  losses = optax.softmax_cross_entropy_with_integer_labels(wide, safe)
  count = jnp.maximum(jnp.sum(valid), 1)
  return jnp.sum(jnp.where(valid, losses, 0.0)) / count


def align_corners_weights(n, out, dtype=jnp.float32) -> jax.Array:
  """[out, n] linear weights with the corners aligned (Caffe's Interp): output pixel i
  samples input position i * (n - 1) / (out - 1), so 41 -> 321 is an exact x8 zoom. Written
  as a tent over the input positions, without gathers, so sizes may be symbolic (exports)."""
  ratio = (jnp.asarray(n, dtype) - 1) / jnp.maximum(jnp.asarray(out, dtype) - 1, 1)
  pos = jnp.arange(out, dtype=dtype) * ratio
  return jax.nn.relu(1 - jnp.abs(pos[:, None] - jnp.arange(n, dtype=dtype)[None]))


def upsample_logits(logits, size, align_corners: bool):
  """Bilinear upsampling of [B,h,w,C] logits to size (H, W): corners aligned as Caffe's
  Interp (the reference, segment.upsample_align_corners), else half-pixel centres."""
  b, _, _, c = logits.shape
  if not align_corners:
    return jax.image.resize(logits, (b, size[0], size[1], c), method='bilinear')
  wide = jnp.promote_types(logits.dtype, jnp.float32)  # float64 logits stay float64.
  rows = align_corners_weights(logits.shape[1], size[0], wide)
  cols = align_corners_weights(logits.shape[2], size[1], wide)
  return jnp.einsum('Hh,bhwc,Ww->bHWc', rows, logits.astype(wide), cols, precision='highest')
