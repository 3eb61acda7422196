"""An independent PyTorch (NCHW) reference of the stage-1 classifier, its training step and
its localization maps, written from paper.md ("Stage 1", "Stage 2") the way the reference
code runs them: a full pair forward per pairing; and of the stage-3 segmenter (DeepLab-v2
ResNet-101 with the LargeFOV head, frozen batch norm) and its training step. Parity tests and
`cows-jax bench` compare the JAX code against it.

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


# --- the segmenter: DeepLab-v2 ResNet-101 with the LargeFOV head (stage 3) ------------------


class FrozenBatchNorm2d(nn.Module):
  """Batch norm with fixed statistics and affine (buffers, no parameters), as the JAX model's
  'frozen_bn' collection: y = (x - mean) / sqrt(var + eps) * weight + bias."""

  def __init__(self, channels: int, eps: float = 1e-5):
    super().__init__()
    self.eps = eps
    for name, value in (
      ('weight', 1.0),
      ('bias', 0.0),
      ('running_mean', 0.0),
      ('running_var', 1.0),
    ):
      self.register_buffer(name, torch.full((channels,), value))

  def forward(self, x):
    scale = self.weight * torch.rsqrt(self.running_var + self.eps)
    shift = self.bias - self.running_mean * scale
    return x * scale[None, :, None, None] + shift[None, :, None, None]


class Bottleneck(nn.Module):
  """torchvision's Bottleneck (1x1, 3x3, 1x1 x4, projection shortcut), with the stride on the
  first 1x1 conv when `stride_in_1x1` (Caffe/MSRA, DeepLab-v2) and the 3x3 conv dilated."""

  def __init__(self, in_ch, planes, stride, dilation, project, stride_in_1x1):
    super().__init__()
    s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
    self.conv1 = nn.Conv2d(in_ch, planes, 1, stride=s1, bias=False)
    self.bn1 = FrozenBatchNorm2d(planes)
    self.conv2 = nn.Conv2d(
      planes, planes, 3, stride=s3, padding=dilation, dilation=dilation, bias=False
    )
    self.bn2 = FrozenBatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = FrozenBatchNorm2d(planes * 4)
    self.downsample = (
      nn.Sequential(
        nn.Conv2d(in_ch, planes * 4, 1, stride=stride, bias=False), FrozenBatchNorm2d(planes * 4)
      )
      if project
      else None
    )

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = F.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return F.relu((x if self.downsample is None else self.downsample(x)) + y)


class DilatedResNet(nn.Module):
  """Stem (7x7/2 conv, 3x3/2 max-pool) and four stages; layer3 and layer4 trade their stride
  for dilation 2 and 4 in every block (DeepLab-v2): output stride 8."""

  def __init__(self, stages=(3, 4, 23, 3), width: float = 1.0, stride_in_1x1: bool = True):
    super().__init__()
    stem = scaled(64, width)
    self.conv1 = nn.Conv2d(3, stem, 7, stride=2, padding=3, bias=False)
    self.bn1 = FrozenBatchNorm2d(stem)
    in_ch = stem
    for i, (blocks, dilation) in enumerate(zip(stages, (1, 1, 2, 4))):
      planes = scaled(64 * 2**i, width)
      stride = 2 if i > 0 and dilation == 1 else 1
      layer = []
      for b in range(blocks):
        project = b == 0 and (stride != 1 or in_ch != planes * 4)
        layer.append(
          Bottleneck(in_ch, planes, stride if b == 0 else 1, dilation, project, stride_in_1x1)
        )
        in_ch = planes * 4
      setattr(self, f'layer{i + 1}', nn.Sequential(*layer))
    self.out_channels = in_ch

  def forward(self, x):
    x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
    for i in range(1, 5):
      x = getattr(self, f'layer{i}')(x)
    return x


class LargeFOV(nn.Module):
  """fc6 3x3 dilated conv (no bias), ReLU, fc7 1x1 (no bias), ReLU, fc8 1x1 to class logits."""

  def __init__(self, in_ch, num_classes, channels=1024, dilation=12):
    super().__init__()
    self.fc6 = nn.Conv2d(in_ch, channels, 3, padding=dilation, dilation=dilation, bias=False)
    self.fc7 = nn.Conv2d(channels, channels, 1, bias=False)
    self.fc8 = nn.Conv2d(channels, num_classes, 1)

  def forward(self, x):
    return self.fc8(F.relu(self.fc7(F.relu(self.fc6(x)))))


class DeepLabLargeFOV(nn.Module):
  """The paper's segmenter, written independently of the JAX model (models/deeplab.py,
  models/resnet.py): logits [B, num_classes, H/8, W/8]. `width` scales the backbone and the
  head's channels as model.width does."""

  def __init__(
    self,
    num_classes: int,
    width: float = 1.0,
    stages=(3, 4, 23, 3),
    head_channels: int = 1024,
    head_dilation: int = 12,
    stride_in_1x1: bool = True,
  ):
    super().__init__()
    self.backbone = DilatedResNet(stages, width, stride_in_1x1)
    self.head = LargeFOV(
      self.backbone.out_channels, num_classes, scaled(head_channels, width), head_dilation
    )

  def forward(self, x):
    return self.head(self.backbone(x))


_FROZEN_BN_NAMES = {
  'weight': 'scale',
  'bias': 'bias',
  'running_mean': 'mean',
  'running_var': 'var',
}


def load_flax_segmenter(model: DeepLabLargeFOV, variables) -> None:
  """Copies the variables of models.deeplab.DeepLab(backbone='resnet101', head='largefov')
  into the torch model: conv kernels HWIO -> OIHW and biases from 'params', frozen batch norm
  from 'frozen_bn' (scale, bias, mean, var)."""
  with torch.no_grad():
    for name, module in model.named_modules():
      path = tuple(name.split('.'))
      if isinstance(module, nn.Conv2d):
        tree = _get(variables['params'], path)
        values = [(module.weight, np.asarray(tree['kernel']).transpose(3, 2, 0, 1))]
        if module.bias is not None:
          values.append((module.bias, np.asarray(tree['bias'])))
      elif isinstance(module, FrozenBatchNorm2d):
        tree = _get(variables['frozen_bn'], path)
        values = [(getattr(module, t), np.asarray(tree[f])) for t, f in _FROZEN_BN_NAMES.items()]
      else:
        continue
      for target, value in values:
        if value.shape != tuple(target.shape):
          raise ValueError(f'{name}: flax {value.shape} vs torch {tuple(target.shape)}')
        target.copy_(torch.tensor(value, dtype=torch.float32))


def segment_loss(model, images, labels, ignore_index=255, align_corners=True):
  """The segmenter's training loss: logits upsampled bilinearly to the label size (corners
  aligned as Caffe's Interp, or half-pixel), each image's mean cross-entropy over its
  non-ignored pixels, averaged over the images (segment.image_mean_cross_entropy)."""
  logits = F.interpolate(
    model(images), size=tuple(labels.shape[1:]), mode='bilinear', align_corners=align_corners
  )
  per_image = [
    F.cross_entropy(logits[i : i + 1].float(), labels[i : i + 1], ignore_index=ignore_index)
    for i in range(len(images))
  ]
  return torch.stack(per_image).mean()


def segment_sgd(model: DeepLabLargeFOV, lr, momentum, weight_decay, mults) -> torch.optim.SGD:
  """SGD with the segmenter's four groups; `mults`: (backbone weight, backbone bias, head
  weight, head bias) learning-rate multipliers."""
  groups = {}
  for name, param in model.named_parameters():
    bias = name.endswith('.bias')
    mult = mults[(0 if name.startswith('backbone.') else 2) + int(bias)]
    groups.setdefault(mult, []).append(param)
  return torch.optim.SGD(
    [{'params': p, 'lr': lr * m} for m, p in groups.items()],
    lr=lr,
    momentum=momentum,
    weight_decay=weight_decay,
  )


def segment_train_step(
  model, optimizer, images, labels, micro_step, accumulation_steps, ignore_index, align_corners
):
  """One micro-step of the segmenter: gradients of loss / k accumulate, and every k-th
  micro-step SGD applies them (segment.accumulation_steps, the reference's iter_size)."""
  loss = segment_loss(model, images, labels, ignore_index, align_corners)
  (loss / accumulation_steps).backward()
  if (micro_step + 1) % accumulation_steps == 0:
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
  return loss.item()
