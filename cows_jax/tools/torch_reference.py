"""An independent PyTorch (NCHW) reference of the stage-1 classifier, its training step and
its localization maps, written from paper.md ("Stage 1", "Stage 2") the way the reference
code runs them: a full pair forward per pairing. Parity tests and `cows-jax bench` compare
the JAX code against it.

Needs torch, which the package does not require: import this module lazily.
"""

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cows_jax.models.vgg import VGG16_BLOCKS, scaled


class PairOutput(NamedTuple):
  """Logits [B, C] of both images (single, co-attention, contrastive) and the co-attention
  class maps [B, C, h, w] before pooling."""

  single_m: torch.Tensor
  single_n: torch.Tensor
  co_m: torch.Tensor
  co_n: torch.Tensor
  con_m: torch.Tensor
  con_n: torch.Tensor
  maps_m: torch.Tensor
  maps_n: torch.Tensor


class VGG16LargeFOV(nn.Module):
  """conv1_1..conv5_3 + ReLU; 2x2/2 pools after blocks 1-3, a 3x3/1 pool after block 4, conv5
  dilated by 2, no pool5: output stride 8."""

  def __init__(self, width: float):
    super().__init__()
    in_ch = 3
    for b, channels in enumerate(VGG16_BLOCKS, start=1):
      dilation = 2 if b == 5 else 1
      for i, ch in enumerate(channels, start=1):
        out_ch = scaled(ch, width)
        setattr(
          self, f'conv{b}_{i}', nn.Conv2d(in_ch, out_ch, 3, padding=dilation, dilation=dilation)
        )
        in_ch = out_ch
    self.out_channels = in_ch

  def forward(self, x):
    for b, channels in enumerate(VGG16_BLOCKS, start=1):
      for i in range(1, len(channels) + 1):
        x = F.relu(getattr(self, f'conv{b}_{i}')(x))
      if b <= 3:
        x = F.max_pool2d(x, 2, 2)
      elif b == 4:
        x = F.max_pool2d(x, 3, 1, 1)
    return x


class CoAttentionClassifier(nn.Module):
  """Backbone, three new 3x3 convs (F), single-image and co-attention classifiers, the
  co-attention matrix W and the contrastive gate."""

  def __init__(self, num_classes: int, width: float = 1.0, feature_dim: int = 512):
    super().__init__()
    dim = scaled(feature_dim, width)
    self.backbone = VGG16LargeFOV(width)
    self.extra1 = nn.Conv2d(self.backbone.out_channels, dim, 3, padding=1)
    self.extra2 = nn.Conv2d(dim, dim, 3, padding=1)
    self.extra3 = nn.Conv2d(dim, dim, 3, padding=1)
    self.classifier = nn.Conv2d(dim, num_classes, 1)
    self.co_classifier = nn.Conv2d(dim, num_classes, 1, bias=False)
    self.gate = nn.Conv2d(dim, 1, 1, bias=False)
    self.co_weight = nn.Linear(dim, dim, bias=False)  # x -> x W with W = weight^T.

  def features(self, x):
    """F [B, D, H/8, W/8] of normalized images [B, 3, H, W]."""
    x = self.backbone(x)
    for conv in (self.extra1, self.extra2, self.extra3):
      x = F.relu(conv(x))
    return x

  def co_attention(self, f_m, f_n):
    """(F_m^co, F_n^co): each position of one image gets a softmax-weighted sum of the other
    image's features, with weights from P = (F_m W) F_n^T."""
    flat_m = f_m.flatten(2).transpose(1, 2)  # [B, Nm, D]
    flat_n = f_n.flatten(2).transpose(1, 2)  # [B, Nn, D]
    affinity = torch.bmm(self.co_weight(flat_m), flat_n.transpose(1, 2))  # [B, Nm, Nn]
    co_m = torch.bmm(F.softmax(affinity, dim=2), flat_n)  # over n positions, per m position
    co_n = torch.bmm(F.softmax(affinity, dim=1).transpose(1, 2), flat_m)  # over m positions
    return (co_m.transpose(1, 2).reshape(f_m.shape), co_n.transpose(1, 2).reshape(f_n.shape))

  def forward(self, x_m, x_n) -> PairOutput:
    """A full pair forward: both images through the backbone, then the pair's heads."""
    f_m, f_n = self.features(x_m), self.features(x_n)
    co_m, co_n = self.co_attention(f_m, f_n)
    con_m = f_m * (1 - torch.sigmoid(self.gate(co_m)))
    con_n = f_n * (1 - torch.sigmoid(self.gate(co_n)))
    maps_m, maps_n = self.co_classifier(co_m), self.co_classifier(co_n)
    gap = lambda x: x.mean(dim=(2, 3))
    return PairOutput(
      single_m=gap(self.classifier(f_m)),
      single_n=gap(self.classifier(f_n)),
      co_m=gap(maps_m),
      co_n=gap(maps_n),
      con_m=gap(self.co_classifier(con_m)),
      con_n=gap(self.co_classifier(con_n)),
      maps_m=maps_m,
      maps_n=maps_n,
    )


def _flax_layout(model: CoAttentionClassifier):
  """(flax param path, torch parameter, HWIO->OIHW or W->weight conversion) for every param."""
  convs = [(('backbone', name), module) for name, module in model.backbone.named_children()]
  convs += [
    ((name,), getattr(model, name))
    for name in ('extra1', 'extra2', 'extra3', 'classifier', 'co_classifier', 'gate')
  ]
  for path, conv in convs:
    yield path + ('kernel',), conv.weight, (3, 2, 0, 1)
    if conv.bias is not None:
      yield path + ('bias',), conv.bias, None
  yield ('co_weight',), model.co_weight.weight, (1, 0)


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def load_flax_params(model: CoAttentionClassifier, flax_params) -> None:
  """Copies CoAttentionNet(norm='none') params into the torch model (HWIO kernels -> OIHW,
  W -> the Linear's weight W^T)."""
  with torch.no_grad():
    for path, param, axes in _flax_layout(model):
      value = np.asarray(_get(flax_params, path), np.float32)
      value = value if axes is None else value.transpose(axes)
      if value.shape != tuple(param.shape):
        raise ValueError(f'{"/".join(path)}: flax {value.shape} vs torch {tuple(param.shape)}')
      param.copy_(torch.tensor(value))


def to_flax(model: CoAttentionClassifier, grads: bool = False) -> dict:
  """The parameters (or their .grad) as numpy arrays in the flax param tree layout."""
  tree = {}
  for path, param, axes in _flax_layout(model):
    value = (
      param if not grads else (torch.zeros_like(param) if param.grad is None else param.grad)
    )  # None: no path to the loss, zero.
    value = value.detach().cpu().numpy()
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value if axes is None else value.transpose(np.argsort(axes))
  return tree


mlsm = F.multilabel_soft_margin_loss


def reference_losses(model, x_m, x_n, l_m, l_n, view_images, epoch, contrastive_from_epoch):
  """The reference step's loss terms: a full pair forward for (m, n) and for m with each of
  its self views (`view_images`: the view images of x_m, NCHW)."""
  out = model(x_m, x_n)
  common = l_m * l_n
  terms = {
    'single': mlsm(torch.cat([out.single_m, out.single_n]), torch.cat([l_m, l_n])),
    'coattention': mlsm(torch.cat([out.co_m, out.co_n]), torch.cat([common, common])),
  }
  contrastive = out.con_m.new_zeros(())
  for scores, diff in ((out.con_m, l_m - common), (out.con_n, l_n - common)):
    if epoch >= contrastive_from_epoch and bool(diff.any()):
      contrastive = contrastive + mlsm(scores, diff)
  terms['contrastive'] = contrastive
  terms['self_single'] = terms['self_coattention'] = out.single_m.new_zeros(())
  both = torch.cat([l_m, l_m])
  for x_v in view_images:
    out_v = model(x_m, x_v)
    terms['self_single'] = terms['self_single'] + mlsm(
      torch.cat([out_v.single_m, out_v.single_n]), both
    )
    terms['self_coattention'] = terms['self_coattention'] + mlsm(
      torch.cat([out_v.co_m, out_v.co_n]), both
    )
  return terms


def sgd(
  model: CoAttentionClassifier,
  lr,
  momentum,
  nesterov,
  weight_decay,
  mult_pretrained_weight,
  mult_pretrained_bias,
  mult_new_weight,
  mult_new_bias,
) -> torch.optim.SGD:
  """torch SGD with four param groups: backbone/new layers x weights/biases."""
  groups = {}
  for name, param in model.named_parameters():
    pretrained = name.startswith('backbone.')
    bias = name.endswith('.bias')
    mult = (
      (mult_pretrained_bias if bias else mult_pretrained_weight)
      if pretrained
      else (mult_new_bias if bias else mult_new_weight)
    )
    groups.setdefault(mult, []).append(param)
  return torch.optim.SGD(
    [{'params': p, 'lr': lr * m} for m, p in groups.items()],
    lr=lr,
    momentum=momentum,
    nesterov=nesterov,
    weight_decay=weight_decay,
  )


def train_step(model, optimizer, x_m, x_n, l_m, l_n, view_images, epoch, contrastive_from_epoch):
  """One reference SGD step (1 + len(view_images) full pair forwards); returns the loss."""
  optimizer.zero_grad(set_to_none=True)
  total = sum(
    reference_losses(model, x_m, x_n, l_m, l_n, view_images, epoch, contrastive_from_epoch).values()
  )
  total.backward()
  optimizer.step()
  return total.item()


def nchw(images) -> torch.Tensor:
  """NHWC numpy/JAX array -> NCHW float32 tensor."""
  array = np.asarray(images, np.float32).transpose(0, 3, 1, 2)
  return torch.from_numpy(np.ascontiguousarray(array))


def bicubic_map_back(maps, view, size):
  """A view's maps [B, C, h, w] in m's frame, as the reference's test script does it: the flip
  view flipped back, a scale view resized by torch's bicubic (a = -0.75)."""
  if view == 'flip':
    return maps.flip(3)
  return F.interpolate(maps, size=size, mode='bicubic', align_corners=False)


def aggregate(maps, gate):
  """The reference's rule over raw maps [V, h, w] (numpy): ReLU, scale to 0..255 by the max,
  maps after the first only if sigmoid(mean(raw)) > gate; the sum over V divided by V."""
  total = np.zeros(maps.shape[1:], np.float64)
  for i, raw in enumerate(maps):
    if i == 0 or 1 / (1 + np.exp(-raw.mean())) > gate:
      relu = np.maximum(raw, 0)
      total += relu / (relu.max() + 1e-8) * 255
  return total / len(maps)


@torch.no_grad()
def localization_maps(model, x_m, classes, partners, view_images, gate, map_back=bicubic_map_back):
  """Aggregated maps [len(classes), h, w] of one image x_m [1, 3, H, W], a full pair forward
  per pairing (the reference's test script). Per class c (partners[j]: the K related images
  [K, 3, H, W] for classes[j]): m's map in the pair with the first view, each view's map
  brought back by `map_back(maps, view, (h, w))`, then the mean of m's maps over the K
  pairs. `view_images`: [(view, image [1, 3, Hv, Wv])] in order."""
  self_maps = []
  for j, (view, x_v) in enumerate(view_images):
    out = model(x_m, x_v)
    if j == 0:
      self_maps.append(out.maps_m)
    self_maps.append(map_back(out.maps_n, view, tuple(out.maps_m.shape[2:])))
  per_class = []
  for c, images_n in zip(classes, partners):
    cross = torch.stack([model(x_m, x_n[None]).maps_m[0, c] for x_n in images_n]).mean(0)
    stack = [m[0, c] for m in self_maps] + [cross]
    per_class.append(aggregate(torch.stack(stack).cpu().numpy(), gate))
  return np.stack(per_class)
