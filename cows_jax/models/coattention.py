"""The co-attention classifier of stage 1 (paper.md, "Stage 1").

Parameter groups by top-level name: `backbone` holds the (ImageNet-pretrained) VGG layers;
every other top-level module is a new layer (10x / 20x learning rate).
"""

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from cows_jax import views as views_lib
from cows_jax.models.conv import Conv
from cows_jax.models.vgg import VGG16LargeFOV, scaled

PRETRAINED_GROUPS = ('backbone',)


class PairScores(NamedTuple):
  """Logits [B, C] for each image of a pair: single, co-attention, contrastive."""

  single_m: jax.Array
  single_n: jax.Array
  co_m: jax.Array
  co_n: jax.Array
  con_m: jax.Array
  con_n: jax.Array


def co_attend(f_m, f_n, w):
  """Co-attentive features for flattened features f_m [B,Nm,D], f_n [B,Nn,D].

  P = (F_m W) F_n^T is [B, Nm, Nn]. m attends over n's positions (softmax over axis 2) and
  n over m's (softmax over axis 1): every row of each attention sums to one over the other
  image's positions. Returns (F_m^co [B,Nm,D], F_n^co [B,Nn,D]) in the dtype of f_m.

  Mixed precision: whatever the compute dtype (bfloat16 with model.dtype='bfloat16'), the
  affinity and both softmaxes over the other image's ~1,000 positions (256 px) run in at
  least float32 (float64 features stay float64: the tests' float64 runs), the affinity at
  full precision (no TF32 or bfloat16 passes: an error of the logits is an error of the
  exponent); the weighted sums take that attention at XLA's default precision. Only the
  outputs go back to the compute dtype.
  """
  dtype = f_m.dtype
  wide = jnp.promote_types(dtype, jnp.float32)
  f_m, f_n, w = (x.astype(wide) for x in (f_m, f_n, w))
  affinity = jnp.einsum('bid,de,bje->bij', f_m, w, f_n, precision='highest')
  attn_m = jax.nn.softmax(affinity, axis=2)  # [B, Nm, Nn]: m position -> n positions.
  attn_n = jax.nn.softmax(affinity, axis=1)  # [B, Nm, Nn]: n position <- m positions.
  co_m = jnp.einsum('bij,bjd->bid', attn_m, f_n)
  co_n = jnp.einsum('bij,bid->bjd', attn_n, f_m)
  return co_m.astype(dtype), co_n.astype(dtype)


class CoAttentionNet(nn.Module):
  """Backbone + new layers. `features` runs images alone; `pair_head` pairs feature maps."""

  num_classes: int
  width: float = 1.0
  feature_dim: int = 512
  norm: str = 'none'
  dtype: Any = jnp.float32

  def setup(self):
    dim = scaled(self.feature_dim, self.width)
    # The reference's initializations: its VGG init (normal, std sqrt(2 / fan_out), zero bias)
    # for the three new convs and the classifier; PyTorch's layer default
    # (uniform +-1/sqrt(fan_in)) for the co-attention W, classifier and gate.
    vgg_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
    torch_default = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')
    self.backbone = VGG16LargeFOV(width=self.width, norm=self.norm, dtype=self.dtype)
    self.extra = [
      Conv(dim, (3, 3), padding=1, dtype=self.dtype, kernel_init=vgg_init, name=f'extra{i}')
      for i in (1, 2, 3)
    ]
    self.classifier = Conv(self.num_classes, (1, 1), dtype=self.dtype, kernel_init=vgg_init)
    self.co_classifier = Conv(
      self.num_classes, (1, 1), use_bias=False, dtype=self.dtype, kernel_init=torch_default
    )
    self.gate = Conv(1, (1, 1), use_bias=False, dtype=self.dtype, kernel_init=torch_default)
    self.co_weight = self.param('co_weight', torch_default, (dim, dim))

  def features(self, images, train: bool = False, mask=None):
    """Feature map F [B, H/8, W/8, D] of normalized images [B, H, W, 3]; `mask` [B]: the
    examples whose BatchNorm statistics count."""
    x = self.backbone(images, train, mask)
    for conv in self.extra:
      x = nn.relu(conv(x))
    return x

  def cam(self, feats):
    """Single-image class maps [B, h, w, C] (the classic CAM)."""
    return self.classifier(feats)

  def pair_maps(self, f_m, f_n):
    """Co-attention class maps of both images, before pooling: ([B,hm,wm,C], [B,hn,wn,C])."""
    co_m, co_n = self._co_features(f_m, f_n)
    return self.co_classifier(co_m), self.co_classifier(co_n)

  def _co_features(self, f_m, f_n):
    b, hm, wm, d = f_m.shape
    _, hn, wn, _ = f_n.shape
    co_m, co_n = co_attend(f_m.reshape(b, hm * wm, d), f_n.reshape(b, hn * wn, d), self.co_weight)
    return co_m.reshape(f_m.shape), co_n.reshape(f_n.shape)

  def pair_head(self, f_m, f_n) -> PairScores:
    """All six score vectors of a pair from its two feature maps."""
    co_m, co_n = self._co_features(f_m, f_n)
    # Scores in at least float32 (float64 compute stays float64).
    pool = lambda x: jnp.mean(x, axis=(1, 2)).astype(jnp.promote_types(x.dtype, jnp.float32))
    con_m = f_m * (1.0 - nn.sigmoid(self.gate(co_m)))
    con_n = f_n * (1.0 - nn.sigmoid(self.gate(co_n)))
    return PairScores(
      single_m=pool(self.classifier(f_m)),
      single_n=pool(self.classifier(f_n)),
      co_m=pool(self.co_classifier(co_m)),
      co_n=pool(self.co_classifier(co_n)),
      con_m=pool(self.co_classifier(con_m)),
      con_n=pool(self.co_classifier(con_n)),
    )

  def __call__(self, images_m, images_n, train: bool = False) -> PairScores:
    """Both images of a pair go through the backbone in one batched call."""
    feats = self.features(jnp.concatenate([images_m, images_n], axis=0), train)
    f_m, f_n = jnp.split(feats, 2, axis=0)
    return self.pair_head(f_m, f_n)

  def training_scores(
    self,
    images_m,
    images_n,
    self_views=(),
    train: bool = True,
    view_source=None,
    mask=None,
    view_images=None,
  ):
    """Scores of the (m, n) pair and of m paired with each of its self views.

    `view_images` {view_key: images} holds the views made on the host from the original
    image; the others are made from `view_source` when given (the reference builds them from
    the image before colour jitter), else from `images_m`. The reference runs a full pair forward per pairing (m's
    backbone four times); here m's features are computed once and reused, and the flip view
    shares the (m, n) backbone call. Returns (PairScores of (m, n), {view_key: PairScores
    of (m, view)}). `mask` [B]: the real pairs of a padded batch (BatchNorm statistics).
    """
    b = images_m.shape[0]
    source = images_m if view_source is None else view_source
    same = [views_lib.make_view(source, v) for v in self_views if views_lib.same_size(v)]
    masks = None if mask is None else jnp.concatenate([mask] * (2 + len(same)))
    feats = self.features(jnp.concatenate([images_m, images_n, *same], axis=0), train, masks)
    f_m, f_n = feats[:b], feats[b : 2 * b]
    same_feats = iter(jnp.split(feats[2 * b :], len(same)) if same else ())
    by_view = {}
    given = view_images or {}
    for view in self_views:
      key = views_lib.view_key(view)
      if views_lib.same_size(view):
        f_v = next(same_feats)
      else:
        image = given[key] if key in given else views_lib.make_view(source, view)
        f_v = self.features(image, train, mask)
      by_view[key] = self.pair_head(f_m, f_v)
    return self.pair_head(f_m, f_n), by_view
