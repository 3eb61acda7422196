"""The two networks a config describes, and their initial variables.

The classifier (`model.*`) and the segmenter (`segment.*`) are built here and only here, so
the trainers, `localize`, the test-time predictor and the tools all build the same network
from the same fields.
"""

import jax
import jax.numpy as jnp

from cows_jax.models import imported
from cows_jax.models.coattention import CoAttentionNet
from cows_jax.models.deeplab import DeepLab


def classifier(cfg) -> CoAttentionNet:
  return CoAttentionNet(
    num_classes=cfg.data.num_classes,
    width=cfg.model.width,
    norm=cfg.model.norm,
    feature_dim=cfg.model.feature_dim,
    dtype=jnp.dtype(cfg.model.dtype),
  )


def segmenter(cfg) -> DeepLab:
  s = cfg.segment
  return DeepLab(
    num_classes=cfg.data.num_classes + 1,
    backbone=s.backbone,
    head=s.head,
    width=cfg.model.width,
    head_channels=s.head_channels,
    head_dilation=s.head_dilation,
    head_init=s.head_init,
    aspp_rates=tuple(s.aspp_rates),
    norm=cfg.model.norm,
    stride_in_1x1=s.resnet_stride_in_1x1,
    dtype=jnp.dtype(s.dtype),
  )


def _random_variables(model, cfg, rng) -> dict:
  if isinstance(model, CoAttentionNet):
    x = jnp.zeros((1, cfg.input.size, cfg.input.size, 3), jnp.float32)
    return dict(jax.jit(model.init)(rng, x, x))
  x = jnp.zeros((1, cfg.segment.crop_size, cfg.segment.crop_size, 3), jnp.float32)
  return dict(jax.jit(model.init)(rng, x))


def _init_from(model, cfg) -> tuple[str, str]:
  """(imported weights directory, backbone arch) of the model."""
  if isinstance(model, CoAttentionNet):
    return cfg.model.init_from, 'vgg16'
  return cfg.segment.init_from, cfg.segment.backbone


def init_variables(model, cfg, rng) -> dict:
  """{'params': ..., and 'batch_stats' / 'frozen_bn' as the backbone has them}; the backbone
  from the imported ImageNet weights when the config names them (new layers keep their own
  init, as in the reference)."""
  return imported.with_pretrained_backbone(
    _random_variables(model, cfg, rng), *_init_from(model, cfg)
  )


def abstract_variables(model, cfg) -> dict:
  """Shapes and dtypes of the variables, without compiling or running the init."""
  return jax.eval_shape(lambda: _random_variables(model, cfg, jax.random.key(0)))
