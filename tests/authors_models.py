"""The authors' trained models as files, for the import tests: PyTorch modules with the
reference's own layer names and computations, and a .caffemodel writer.

Written from the reference code (GuoleiSun/MCIS_wsss), independently of cows_jax:
- `CoattentionModel`: Classifier/models/vgg.py's `coattentionmodel` (a `vgg` submodule with
  the 'D1' VGG16 `features`, `extra_convs` and `extra_last_conv`; `extra_linear_e`,
  `extra_gate` and `extra_gate_merge` on top). `training_checkpoint` is the dict
  Classifier/scripts/train.py saves around a DataParallel model's state dict.
- `DeepLabResNet101`: the Caffe net of segmentation/examples/seg/deploy_resnet_fov.prototxt
  (conv + BatchNorm + Scale layers, LargeFOV head pyram_conv1, pyram_conv2, score), or
  DeepLab-v2's ASPP head (fc1_voc12_c0..c3); `caffe_layers` gives its Caffe blobs.
- `write_caffemodel`: a binary NetParameter written with the protobuf wire format by hand,
  from caffe.proto's field numbers (not the importer's message definitions).

Channel widths are parameters so the tests run at tiny sizes (the reference: 64 and 1024).
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# ---------------------------------------------------------------- the co-attention classifier


def _vgg_d1(base: int) -> nn.Sequential:
  """make_layers(cfg['D1']): VGG16 with pool4 3x3/1 (pad 1), no pool5, the last three convs
  dilated by 2; ReLU after every conv (in place, as the reference)."""
  cfg = [1, 1, 'M', 2, 2, 'M', 4, 4, 4, 'M', 8, 8, 8, 'N', 8, 8, 8]
  layers, cin = [], 3
  for i, v in enumerate(cfg):
    if v == 'M':
      layers.append(nn.MaxPool2d(2, 2))
    elif v == 'N':
      layers.append(nn.MaxPool2d(3, 1, 1))
    else:
      d = 2 if i > 13 else 1
      layers += [nn.Conv2d(cin, v * base, 3, padding=d, dilation=d), nn.ReLU(inplace=True)]
      cin = v * base
  return nn.Sequential(*layers)


class VGGCoattention(nn.Module):
  """The reference's `VGG_coattention`: backbone, three extra convs, the single classifier."""

  def __init__(self, base: int, dim: int, num_classes: int):
    super().__init__()
    self.num_classes = num_classes
    self.features = _vgg_d1(base)
    self.extra_convs = nn.Sequential(
      nn.Conv2d(8 * base, dim, 3, padding=1),
      nn.ReLU(True),
      nn.Conv2d(dim, dim, 3, padding=1),
      nn.ReLU(True),
      nn.Conv2d(dim, dim, 3, padding=1),
      nn.ReLU(True),
    )
    self.extra_last_conv = nn.Conv2d(dim, num_classes, 1)

  def forward(self, x):
    feature = self.extra_convs(self.features(x))
    cam = self.extra_last_conv(feature)
    score = F.avg_pool2d(cam, kernel_size=(cam.size(2), cam.size(3))).view(-1, self.num_classes)
    return feature, cam, score


class CoattentionModel(nn.Module):
  """The reference's `CoattentionModel`; `forward` returns every score and map by name."""

  def __init__(self, base: int = 64, dim: int = 512, num_classes: int = 20):
    super().__init__()
    self.vgg = VGGCoattention(base, dim, num_classes)
    self.extra_linear_e = nn.Linear(dim, dim, bias=False)
    self.extra_gate = nn.Conv2d(dim, num_classes, kernel_size=1, bias=False)
    self.extra_gate_merge = nn.Conv2d(dim, 1, kernel_size=1, bias=False)

  def forward(self, input1, input2) -> dict:
    feature1, cam1, score1 = self.vgg(input1)
    feature2, cam2, score2 = self.vgg(input2)
    b, c, h1, w1 = feature1.shape
    _, _, h2, w2 = feature2.shape
    flat1 = feature1.view(b, c, h1 * w1)
    flat2 = feature2.view(b, c, h2 * w2)
    corr1 = self.extra_linear_e(torch.transpose(flat1, 1, 2).contiguous())
    a2 = torch.bmm(corr1, flat2)  # [B, N1, N2]
    a = F.softmax(a2, dim=1)
    b_ = F.softmax(torch.transpose(a2, 1, 2), dim=1)
    att2 = torch.bmm(flat1, a).view(b, c, h2, w2)
    att1 = torch.bmm(flat2, b_).view(b, c, h1, w1)
    gate1 = torch.sigmoid(self.extra_gate_merge(att1))
    gate2 = torch.sigmoid(self.extra_gate_merge(att2))
    co_map1, co_map2 = self.extra_gate(att1), self.extra_gate(att2)
    con_map1 = self.extra_gate(feature1 * (1 - gate1))
    con_map2 = self.extra_gate(feature2 * (1 - gate2))
    gap = lambda m: m.mean(dim=(2, 3))
    return {
      'single_m': score1,
      'single_n': score2,
      'co_m': gap(co_map1),
      'co_n': gap(co_map2),
      'con_m': gap(con_map1),
      'con_n': gap(con_map2),
      'cam_m': cam1,
      'cam_n': cam2,
      'co_map_m': co_map1,
      'co_map_n': co_map2,
    }


def random_coattention(base: int, dim: int, num_classes: int, seed: int = 0) -> CoattentionModel:
  """A CoattentionModel with random weights and biases of every layer, scaled so that
  activations and affinities stay of order one."""
  torch.manual_seed(seed)
  model = CoattentionModel(base, dim, num_classes)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, nn.Conv2d):
        fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
        m.weight.normal_(0, (2.0 / fan_in) ** 0.5)
        if m.bias is not None:
          m.bias.uniform_(-0.1, 0.1)
    model.extra_linear_e.weight.normal_(0, 1.0 / dim)
  return model.eval()


def training_checkpoint(model: CoattentionModel, epoch: int, global_counter: int) -> dict:
  """The dict the reference's train.py saves (save_checkpoint): its model is wrapped in
  DataParallel, so every state dict key starts with `module.`."""
  params = list(model.parameters())
  optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9, nesterov=True)
  for p in params:
    p.grad = torch.zeros_like(p)
  optimizer.step()  # momentum buffers exist in a real checkpoint's optimizer state.
  return {
    'epoch': epoch,
    'global_counter': global_counter,
    'state_dict': {f'module.{k}': v for k, v in model.state_dict().items()},
    'optimizer': optimizer.state_dict(),
  }


# ---------------------------------------------------------------- the DeepLab-v2 segmenter


class CaffeBatchNorm(nn.Module):
  """Caffe's BatchNorm with use_global_stats: blobs mean and variance, both multiplied by the
  moving-average factor (the third blob); eps 1e-5."""

  def __init__(self, channels: int):
    super().__init__()
    self.register_buffer('mean', torch.zeros(channels))
    self.register_buffer('var', torch.ones(channels))
    self.register_buffer('factor', torch.ones(1))

  def forward(self, x):
    s = 1.0 / self.factor
    mean, var = (self.mean * s)[None, :, None, None], (self.var * s)[None, :, None, None]
    return (x - mean) / torch.sqrt(var + 1e-5)


class CaffeScale(nn.Module):
  def __init__(self, channels: int):
    super().__init__()
    self.gamma = nn.Parameter(torch.ones(channels))
    self.beta = nn.Parameter(torch.zeros(channels))

  def forward(self, x):
    return x * self.gamma[None, :, None, None] + self.beta[None, :, None, None]


def _block_names():
  """(stage, block name, first block of its stage) in Caffe's naming: res2a..c, res3a,
  res3b1..b3, res4a, res4b1..b22, res5a..c."""
  for stage, n in zip((2, 3, 4, 5), (3, 4, 23, 3)):
    for b in range(n):
      if b == 0:
        name = f'{stage}a'
      elif n > 3:
        name = f'{stage}b{b}'
      else:
        name = f'{stage}{"abc"[b]}'
      yield stage, name, b == 0


class DeepLabResNet101(nn.Module):
  """deploy_resnet_fov.prototxt: ResNet-101 (stride on the first 1x1 conv of res3a; res4
  dilation 2, res5 dilation 4; Caffe's ceil-mode pool1) and the LargeFOV head, or
  DeepLab-v2's ASPP head. Every Caffe layer is a submodule of the same name. Input: BGR
  minus the mean, NCHW; output: the `score` logits at stride 8."""

  def __init__(self, base: int = 64, head_channels: int = 1024, outputs: int = 21, head='fov'):
    super().__init__()
    self.head = head
    self._conv('conv1', 3, base, 7, stride=2, pad=3)
    cin = base
    self.blocks = []
    for stage, name, first in _block_names():
      width = base * 2 ** (stage - 2)
      stride = 2 if stage == 3 and first else 1
      dilation = {4: 2, 5: 4}.get(stage, 1)
      if first:
        self._conv(f'res{name}_branch1', cin, width * 4, 1, stride=stride)
      self._conv(f'res{name}_branch2a', cin, width, 1, stride=stride)
      self._conv(f'res{name}_branch2b', width, width, 3, pad=dilation, dilation=dilation)
      self._conv(f'res{name}_branch2c', width, width * 4, 1)
      self.blocks.append((name, first))
      cin = width * 4
    if head == 'fov':
      self.add_module(
        'pyram_conv1', nn.Conv2d(cin, head_channels, 3, padding=12, dilation=12, bias=False)
      )
      self.add_module('pyram_conv2', nn.Conv2d(head_channels, head_channels, 1, bias=False))
      self.add_module('score', nn.Conv2d(head_channels, outputs, 1))
    else:
      for i, rate in enumerate((6, 12, 18, 24)):
        self.add_module(f'fc1_voc12_c{i}', nn.Conv2d(cin, outputs, 3, padding=rate, dilation=rate))

  def _conv(self, name, cin, cout, size, stride=1, pad=0, dilation=1):
    """A bias-free conv with its BatchNorm and Scale layers (bn<x>, scale<x> of res<x>)."""
    self.add_module(name, nn.Conv2d(cin, cout, size, stride, pad, dilation, bias=False))
    suffix = name[3:] if name.startswith('res') else '_' + name
    self.add_module(f'bn{suffix}', CaffeBatchNorm(cout))
    self.add_module(f'scale{suffix}', CaffeScale(cout))

  def _unit(self, name, x):
    suffix = name[3:] if name.startswith('res') else '_' + name
    layer = lambda n: getattr(self, n)
    return layer(f'scale{suffix}')(layer(f'bn{suffix}')(layer(name)(x)))

  def forward(self, x):
    x = F.relu(self._unit('conv1', x))
    x = F.max_pool2d(x, 3, 2, 1, ceil_mode=True)  # Caffe's pooling rounds up.
    for name, first in self.blocks:
      y = F.relu(self._unit(f'res{name}_branch2a', x))
      y = F.relu(self._unit(f'res{name}_branch2b', y))
      y = self._unit(f'res{name}_branch2c', y)
      x = F.relu(y + (self._unit(f'res{name}_branch1', x) if first else x))
    if self.head == 'fov':
      x = F.relu(self.pyram_conv1(x))
      x = F.relu(self.pyram_conv2(x))
      return self.score(x)
    return sum(getattr(self, f'fc1_voc12_c{i}')(x) for i in range(4))


def random_deeplab(base: int, head_channels: int, outputs: int, head='fov', seed: int = 0):
  """A DeepLabResNet101 with random convs and non-trivial BatchNorm statistics (stored times a
  moving-average factor, as Caffe does) and Scale parameters."""
  torch.manual_seed(seed)
  model = DeepLabResNet101(base, head_channels, outputs, head)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, nn.Conv2d):
        fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
        m.weight.normal_(0, (1.0 / fan_in) ** 0.5)
        if m.bias is not None:
          m.bias.uniform_(-0.1, 0.1)
      elif isinstance(m, CaffeBatchNorm):
        m.factor.fill_(999.982)
        m.mean.uniform_(-0.3, 0.3).mul_(m.factor)
        m.var.uniform_(0.5, 2.0).mul_(m.factor)
      elif isinstance(m, CaffeScale):
        m.gamma.uniform_(0.5, 1.2)
        m.beta.uniform_(-0.2, 0.2)
  return model.eval()


def caffe_layers(model: DeepLabResNet101) -> dict[str, list[np.ndarray]]:
  """Layer name -> Caffe blobs: conv [weight (, bias)], BatchNorm [mean, var, factor],
  Scale [gamma, beta]."""
  layers = {}
  for name, m in model.named_children():
    if isinstance(m, nn.Conv2d):
      layers[name] = [m.weight.detach().numpy()] + (
        [m.bias.detach().numpy()] if m.bias is not None else []
      )
    elif isinstance(m, CaffeBatchNorm):
      layers[name] = [m.mean.numpy(), m.var.numpy(), m.factor.numpy()]
    elif isinstance(m, CaffeScale):
      layers[name] = [m.gamma.detach().numpy(), m.beta.detach().numpy()]
  return layers


# ---------------------------------------------------------------- .caffemodel


def _varint(n: int) -> bytes:
  out = bytearray()
  while True:
    byte, n = n & 0x7F, n >> 7
    out.append(byte | (0x80 if n else 0))
    if not n:
      return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
  """A length-delimited field (wire type 2)."""
  return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def write_caffemodel(path, layers: dict, net_name: str = 'HSeg') -> None:
  """A binary caffemodel: NetParameter {name = 1; repeated LayerParameter layer = 100}, each
  LayerParameter {name = 1; type = 2; repeated BlobProto blobs = 7}, each BlobProto
  {BlobShape shape = 7 {repeated int64 dim = 1 [packed]}; repeated float data = 5 [packed]}
  (caffe.proto)."""
  net = _field(1, net_name.encode())
  for name, blobs in layers.items():
    kind = 'BatchNorm' if name.startswith('bn') else 'Scale' if name.startswith('scale') else None
    layer = _field(1, name.encode()) + _field(2, (kind or 'Convolution').encode())
    for blob in blobs:
      blob = np.asarray(blob, '<f4')
      shape = _field(1, b''.join(_varint(d) for d in blob.shape))
      data = blob.tobytes()
      layer += _field(7, _field(7, shape) + _field(5, data))
    net += _field(100, layer)
  with open(path, 'wb') as f:
    f.write(net)
