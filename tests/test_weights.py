"""Weight import of ImageNet backbones: state dicts in the exact torchvision layout (made here by
a PyTorch model), a Caffe model written with protobuf, and the errors a wrong file gives. The
authors' trained models: test_weights_authors.py."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cows_jax import config
from cows_jax.models import from_config, imported
from cows_jax.models.vgg import VGG16LargeFOV
from cows_jax.tools import weights_import, weights_layout

torch = pytest.importorskip(
  'torch',
  reason='torch is not installed: .ci/run installs it; '
  'pip install torch==2.13.0 to run the import tests',
)
nn = torch.nn


def _torch_vgg16_largefov():
  """torchvision's vgg16 `features` layout (same indices, so the same keys) with the
  LargeFOV changes: pool4 3x3 stride 1, no pool5, dilated conv5; plus the fc classifier
  keys of the torchvision file, which the importer must ignore."""
  layers, cin = [], 3
  for block, (n, cout) in enumerate(((2, 64), (2, 128), (3, 256), (3, 512), (3, 512)), 1):
    d = 2 if block == 5 else 1
    for _ in range(n):
      layers += [nn.Conv2d(cin, cout, 3, padding=d, dilation=d), nn.ReLU()]
      cin = cout
    if block <= 3:
      layers.append(nn.MaxPool2d(2, 2))
    elif block == 4:
      layers.append(nn.MaxPool2d(3, 1, 1))
  model = nn.Module()
  model.features = nn.Sequential(*layers)
  model.classifier = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Dropout(), nn.Linear(4, 4))
  return model


@pytest.fixture(scope='module')
def torch_vgg():
  torch.manual_seed(0)
  return _torch_vgg16_largefov().eval()


def _check_forward(torch_vgg, out_dir):
  x = np.random.default_rng(0).normal(size=(2, 3, 40, 40)).astype(np.float32)
  with torch.no_grad():
    expected = torch_vgg.features(torch.from_numpy(x)).numpy().transpose(0, 2, 3, 1)
  model = VGG16LargeFOV()
  like = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 40, 40, 3)))
  variables = imported.load_backbone(out_dir, 'vgg16', dict(like))
  got = np.asarray(model.apply(variables, x.transpose(0, 2, 3, 1)))
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize('fmt', ['pth', 'safetensors'])
def test_torchvision_vgg16_matches_pytorch_forward(torch_vgg, tmp_path, fmt):
  src = str(tmp_path / f'vgg16.{fmt}')
  state = torch_vgg.state_dict()
  if fmt == 'pth':
    torch.save(state, src)
  else:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, src)
  provenance = weights_import.import_weights('vgg16', src, str(tmp_path / 'out'))
  assert provenance['input']['name'] == 'torchvision'
  assert provenance['ignored_keys'] == sorted(k for k in state if k.startswith('classifier'))
  _check_forward(torch_vgg, str(tmp_path / 'out'))


def _write_caffemodel(path, layers):
  """A binary caffemodel written with the protobuf wire format by hand (authors_models.py),
  not with the importer's own message definitions."""
  import authors_models

  authors_models.write_caffemodel(path, layers, net_name='test')


def test_caffe_vgg16_takes_rgb_and_caffe_mean(torch_vgg, tmp_path):
  state = {k: v.numpy() for k, v in torch_vgg.state_dict().items()}
  layers = {}
  for index, name in zip(weights_layout.VGG16_FEATURE_CONVS, weights_layout.VGG16_NAMES):
    w = state[f'features.{index}.weight']
    if name == 'conv1_1':
      w = w[:, ::-1]  # a Caffe model expects BGR input.
    layers[name] = [np.ascontiguousarray(w), state[f'features.{index}.bias']]
  layers['fc8'] = [np.zeros((3, 4), np.float32)]
  src = str(tmp_path / 'vgg16.caffemodel')
  _write_caffemodel(src, layers)
  provenance = weights_import.import_weights('vgg16', src, str(tmp_path / 'out'))
  assert provenance['ignored_keys'] == ['fc8']
  np.testing.assert_allclose(
    np.array(provenance['input']['mean']) * 255, [122.675, 116.669, 104.008], rtol=1e-6
  )
  _check_forward(torch_vgg, str(tmp_path / 'out'))  # RGB in, as the torch model.


def test_wrong_files_give_clear_errors(torch_vgg, tmp_path):
  state = torch_vgg.state_dict()
  truncated = tmp_path / 'truncated.pth'
  torch.save(state, truncated)
  truncated.write_bytes(truncated.read_bytes()[:1000])
  with pytest.raises(imported.WeightsError, match='truncated.pth: not a readable PyTorch'):
    weights_import.import_weights('vgg16', str(truncated), str(tmp_path / 'a'))

  other = tmp_path / 'resnet_like.pth'
  torch.save({'conv1.weight': torch.zeros(64, 3, 7, 7), 'fc.weight': torch.zeros(10, 2048)}, other)
  with pytest.raises(
    imported.WeightsError, match='resnet_like.pth: none of its keys.*another architecture'
  ):
    weights_import.import_weights('vgg16', str(other), str(tmp_path / 'b'))

  bad_shape = {k: v for k, v in state.items()}
  bad_shape['features.0.weight'] = torch.zeros(32, 3, 3, 3)
  torch.save(bad_shape, tmp_path / 'bad.pth')
  with pytest.raises(imported.WeightsError, match=r'conv1_1/kernel: file \(3, 3, 3, 32\)'):
    weights_import.import_weights('vgg16', str(tmp_path / 'bad.pth'), str(tmp_path / 'c'))

  (tmp_path / 'junk.caffemodel').write_bytes(b'\xff' * 64)
  with pytest.raises(imported.WeightsError, match='junk.caffemodel'):
    weights_import.import_weights('vgg16', str(tmp_path / 'junk.caffemodel'), str(tmp_path / 'd'))
  for out in 'abcd':
    assert not os.path.exists(tmp_path / out / 'provenance.json')


def test_load_checks_arch_and_width(torch_vgg, tmp_path):
  src = str(tmp_path / 'vgg16.pth')
  torch.save(torch_vgg.state_dict(), src)
  weights_import.import_weights('vgg16', src, str(tmp_path / 'out'))
  with pytest.raises(imported.WeightsError, match='holds vgg16 weights, the model needs resnet101'):
    imported.load_backbone(str(tmp_path / 'out'), 'resnet101', {})
  small = jax.eval_shape(
    VGG16LargeFOV(width=0.5).init, jax.random.key(0), jnp.zeros((1, 32, 32, 3))
  )
  with pytest.raises(imported.WeightsError, match='shape mismatch'):
    imported.load_backbone(str(tmp_path / 'out'), 'vgg16', dict(small))


def test_classifier_starts_from_imported_backbone(torch_vgg, tmp_path, tiny_config, monkeypatch):
  src = str(tmp_path / 'vgg16.caffemodel')
  state = {k: v.numpy() for k, v in torch_vgg.state_dict().items()}
  _write_caffemodel(
    src,
    {
      name: [state[f'features.{i}.weight'], state[f'features.{i}.bias']]
      for i, name in zip(weights_layout.VGG16_FEATURE_CONVS, weights_layout.VGG16_NAMES)
    },
  )
  weights_import.import_weights('vgg16', src, str(tmp_path / 'out'))
  cfg = tiny_config
  cfg.model.width, cfg.model.norm, cfg.input.size = 1.0, 'none', 32
  cfg.model.init_from = str(tmp_path / 'out')
  model = from_config.classifier(cfg)
  # The random init as from_config.init_variables makes it (zeros here: no compile needed).
  fresh = jax.tree.map(
    lambda a: np.zeros(a.shape, a.dtype), from_config.abstract_variables(model, cfg)
  )
  variables = imported.with_pretrained_backbone(fresh, cfg.model.init_from, 'vgg16')
  w = variables['params']['backbone']['conv2_1']['kernel']
  np.testing.assert_array_equal(w, state['features.5.weight'].transpose(2, 3, 1, 0))
  # conv1_1 came from a BGR Caffe model: RGB order now.
  np.testing.assert_array_equal(
    variables['params']['backbone']['conv1_1']['kernel'],
    state['features.0.weight'][:, ::-1].transpose(2, 3, 1, 0),
  )
  # New layers keep their own initialization.
  assert not np.any(variables['params']['co_weight'])
  finalized = config.finalize(cfg)
  np.testing.assert_allclose(np.array(finalized.input.std) * 255, [1, 1, 1], rtol=1e-6)

  # A stage called from Python with the unfinalized config normalizes as the CLI does.
  from cows_jax import classify

  class Seen(Exception):
    pass

  def capture(stage_cfg):
    raise Seen(stage_cfg)

  monkeypatch.setattr(classify.sources, 'classifier_pool', capture)
  with pytest.raises(Seen) as seen:
    classify.train(cfg, str(tmp_path / 'run'))
  assert seen.value.args[0].input.mean == finalized.input.mean != cfg.input.mean
  assert seen.value.args[0].input.std == finalized.input.std != cfg.input.std


class _TorchBottleneck(nn.Module):
  """torchvision's Bottleneck keys; stride on the 1x1 (Caffe) or on the 3x3 (torchvision);
  every block of a dilated stage dilated, as DeepLab-v2."""

  def __init__(self, cin, width, stride, dilation, project, stride_in_1x1):
    super().__init__()
    s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
    self.conv1 = nn.Conv2d(cin, width, 1, s1, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.conv2 = nn.Conv2d(width, width, 3, s3, dilation, dilation, bias=False)
    self.bn2 = nn.BatchNorm2d(width)
    self.conv3 = nn.Conv2d(width, width * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(width * 4)
    self.downsample = (
      nn.Sequential(nn.Conv2d(cin, width * 4, 1, stride, bias=False), nn.BatchNorm2d(width * 4))
      if project
      else None
    )

  def forward(self, x):
    y = torch.relu(self.bn1(self.conv1(x)))
    y = torch.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return torch.relu(y + (self.downsample(x) if self.downsample is not None else x))


class _TorchResNet101(nn.Module):
  def __init__(self, width_mult, stride_in_1x1):
    super().__init__()
    from cows_jax.models.vgg import scaled

    stem = scaled(64, width_mult)
    self.conv1 = nn.Conv2d(3, stem, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(stem)
    cin = stem
    for i, (n, dilation) in enumerate(zip((3, 4, 23, 3), (1, 1, 2, 4))):
      width, stride = scaled(64 * 2**i, width_mult), 2 if i == 1 else 1
      blocks = [
        _TorchBottleneck(
          cin if b == 0 else width * 4,
          width,
          stride if b == 0 else 1,
          dilation,
          b == 0,
          stride_in_1x1,
        )
        for b in range(n)
      ]
      setattr(self, f'layer{i + 1}', nn.Sequential(*blocks))
      cin = width * 4
    self.fc = nn.Linear(cin, 10)

  def forward(self, x):
    x = torch.relu(self.bn1(self.conv1(x)))
    x = torch.nn.functional.max_pool2d(x, 3, 2, 1)
    for i in range(1, 5):
      x = getattr(self, f'layer{i}')(x)
    return x


def _torch_resnet(width_mult, stride_in_1x1):
  torch.manual_seed(0)
  model = _TorchResNet101(width_mult, stride_in_1x1)
  for m in model.modules():  # non-trivial statistics and affine in every batch norm.
    if isinstance(m, nn.BatchNorm2d):
      m.running_mean.uniform_(-0.5, 0.5)
      m.running_var.uniform_(0.5, 2.0)
      m.weight.data.uniform_(0.5, 1.5)
      m.bias.data.uniform_(-0.2, 0.2)
  return model.eval()


def _check_resnet_forward(torch_model, variables, width_mult, stride_in_1x1, bgr=False):
  from cows_jax.models.resnet import ResNet

  x = np.random.default_rng(0).normal(size=(1, 3, 48, 48)).astype(np.float32)
  with torch.no_grad():
    expected = torch_model(torch.from_numpy(x[:, ::-1].copy() if bgr else x)).numpy()
  model = ResNet(width=width_mult, stride_in_1x1=stride_in_1x1)
  got = np.asarray(model.apply(variables, x.transpose(0, 2, 3, 1)))
  np.testing.assert_allclose(
    got, expected.transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-4 * np.abs(expected).max()
  )


def test_torchvision_resnet101_matches_pytorch_forward():
  model = _torch_resnet(0.0625, stride_in_1x1=False)
  variables, ignored = weights_import.resnet101_from_torchvision(
    {k: v.numpy() for k, v in model.state_dict().items()}
  )
  assert ignored == ['fc.bias', 'fc.weight']
  _check_resnet_forward(model, variables, 0.0625, stride_in_1x1=False)


def test_caffe_resnet101_matches_pytorch_forward(tmp_path):
  """A tiny caffemodel in the MSRA/DeepLab naming (conv + BatchNorm with a moving-average
  factor + Scale), BGR first conv, written with protobuf."""
  model = _torch_resnet(0.0625, stride_in_1x1=True)
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  layers = {}
  for _, _, conv, bn, c_conv, c_bn, c_scale in weights_layout.resnet_layers():
    w = state[f'{conv}.weight']
    layers[c_conv] = [np.ascontiguousarray(w[:, ::-1] if conv == 'conv1' else w)]
    factor = 7.0  # Caffe stores mean and var multiplied by this factor.
    layers[c_bn] = [
      state[f'{bn}.running_mean'] * factor,
      state[f'{bn}.running_var'] * factor,
      np.array([factor], np.float32),
    ]
    layers[c_scale] = [state[f'{bn}.weight'], state[f'{bn}.bias']]
  layers['fc1_voc12_c0'] = [np.zeros((21, 8, 3, 3), np.float32)]
  src = str(tmp_path / 'init.caffemodel')
  _write_caffemodel(src, layers)
  variables, ignored = weights_import.resnet101_from_caffe(weights_import.read_caffemodel(src))
  assert ignored == ['fc1_voc12_c0']
  _check_resnet_forward(model, variables, 0.0625, stride_in_1x1=True)


def test_full_size_resnet101_import_into_the_segmenter(tmp_path, tiny_config):
  from safetensors.torch import save_file

  model = _torch_resnet(1.0, stride_in_1x1=False)
  src = str(tmp_path / 'resnet101.safetensors')
  save_file({k: v.contiguous() for k, v in model.state_dict().items()}, src)
  provenance = weights_import.import_weights('resnet101', src, str(tmp_path / 'out'))
  assert provenance['arch'] == 'resnet101'
  assert provenance['ignored_keys'] == ['fc.bias', 'fc.weight']

  cfg = tiny_config
  cfg.model.width, cfg.segment.backbone = 1.0, 'resnet101'
  cfg.segment.init_from = str(tmp_path / 'out')
  cfg = config.finalize(cfg)
  assert cfg.segment.resnet_stride_in_1x1 is False  # torchvision's layout.
  fresh = jax.tree.map(
    lambda a: np.zeros(a.shape, a.dtype),
    from_config.abstract_variables(from_config.segmenter(cfg), cfg),
  )
  variables = imported.with_pretrained_backbone(fresh, cfg.segment.init_from, 'resnet101')
  np.testing.assert_array_equal(
    variables['frozen_bn']['backbone']['layer3']['5']['bn2']['var'],
    model.layer3[5].bn2.running_var.numpy(),
  )
  assert not np.any(jax.tree.leaves(variables['params']['head'])[0])  # head: own init.
