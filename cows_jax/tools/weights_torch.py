"""PyTorch weight files into this project's variables: torchvision/timm state dicts (.pth/.pt/
.bin, .safetensors) of ImageNet VGG16 and ResNet-101, and the reference classifier's training
checkpoint (Classifier/scripts/train.py) into models/coattention.py."""

import os

import numpy as np

from cows_jax.models.imported import WeightsError
from cows_jax.tools import weights_layout as layout


def _load_torch(path: str):
  """The object a PyTorch file holds (tensors only, no code: weights_only)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'weights file {path} does not exist')
  try:
    import torch
  except ImportError:
    raise WeightsError(
      f'{path}: reading PyTorch files needs torch (pip install torch); or '
      'convert the file to .safetensors, which needs no torch'
    ) from None
  try:
    return torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # torch raises many types for corrupt or truncated files.
    first = (str(e).strip().splitlines() or [''])[0][:200]
    raise WeightsError(f'{path}: not a readable PyTorch file ({type(e).__name__}: {first})') from e


def _tensors(obj, path: str) -> dict[str, np.ndarray]:
  """Name -> float32 array of a state dict, unwrapped from a training checkpoint's dict and
  without DataParallel's `module.` prefix."""
  for key in ('state_dict', 'model'):  # training checkpoints wrap the weights.
    if isinstance(obj, dict) and isinstance(obj.get(key), dict):
      obj = obj[key]
  if not isinstance(obj, dict):
    raise WeightsError(f'{path}: expected a state dict, found {type(obj).__name__}')
  return {
    k.removeprefix('module.'): v.detach().float().numpy()
    for k, v in obj.items()
    if hasattr(v, 'detach')
  }


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """Name -> array from a .safetensors or a PyTorch (.pth/.pt/.bin) file."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'weights file {path} does not exist')
  if path.endswith('.safetensors'):
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
      return dict(load_file(path))
    except (SafetensorError, OSError, ValueError) as e:
      raise WeightsError(f'{path}: not a readable safetensors file ({e})') from e
  return _tensors(_load_torch(path), path)


def read_training_checkpoint(path: str) -> tuple[dict[str, np.ndarray], dict]:
  """(state dict, {'epoch', 'global_counter'}) of a checkpoint the reference's train.py
  saves: {'epoch': 0-based epoch, 'global_counter': steps so far, 'state_dict': ...,
  'optimizer': ...}. A bare state dict gives None for both."""
  obj = _load_torch(path)
  meta = {
    k: obj.get(k) if isinstance(obj, dict) and isinstance(obj.get(k), int) else None
    for k in ('epoch', 'global_counter')
  }
  return _tensors(obj, path), meta


def vgg16_from_torchvision(tensors: dict) -> tuple[dict, list[str]]:
  """Backbone params of models/vgg.py from torchvision/timm vgg16 keys; returns (params,
  keys of the file that were not used, e.g. the fc classifier)."""
  params, used = {}, set()
  for index, name in zip(layout.VGG16_FEATURE_CONVS, layout.VGG16_NAMES):
    w, b = f'features.{index}.weight', f'features.{index}.bias'
    if w in tensors and b in tensors:
      params[name] = {'kernel': layout.conv_kernel(tensors[w]), 'bias': np.asarray(tensors[b])}
      used |= {w, b}
  return {'params': params}, sorted(set(tensors) - used)


def resnet101_from_torchvision(tensors: dict) -> tuple[dict, list[str]]:
  """params (conv kernels) and frozen_bn (scale, bias, mean, var) of models/resnet.py from
  torchvision/timm resnet101 keys."""
  params, frozen, used = {}, {}, set()
  for conv_path, bn_path, conv, bn, *_ in layout.resnet_layers():
    keys = {
      f'{conv}.weight': 'kernel',
      f'{bn}.weight': 'scale',
      f'{bn}.bias': 'bias',
      f'{bn}.running_mean': 'mean',
      f'{bn}.running_var': 'var',
    }
    if not all(k in tensors for k in keys):
      continue
    layout.put(params, conv_path + ('kernel',), layout.conv_kernel(tensors[f'{conv}.weight']))
    for k, name in list(keys.items())[1:]:
      layout.put(frozen, bn_path + (name,), np.asarray(tensors[k], np.float32))
    used |= set(keys) | {f'{bn}.num_batches_tracked'}
  return {'params': params, 'frozen_bn': frozen}, sorted(set(tensors) - used)


def _coattention_keys():
  """(state dict key, flax params path, conversion) of every tensor of the reference's
  `coattentionmodel` (Classifier/models/vgg.py), without DataParallel's `module.`."""
  kernel, same = layout.conv_kernel, lambda a: np.asarray(a, np.float32)
  for index, name in zip(
    layout.VGG16_FEATURE_CONVS, layout.VGG16_NAMES
  ):  # cfg 'D1': torchvision's indices.
    yield f'vgg.features.{index}.weight', ('backbone', name, 'kernel'), kernel
    yield f'vgg.features.{index}.bias', ('backbone', name, 'bias'), same
  for i, index in enumerate((0, 2, 4), start=1):  # Conv, ReLU, Conv, ReLU, Conv, ReLU.
    yield f'vgg.extra_convs.{index}.weight', (f'extra{i}', 'kernel'), kernel
    yield f'vgg.extra_convs.{index}.bias', (f'extra{i}', 'bias'), same
  yield 'vgg.extra_last_conv.weight', ('classifier', 'kernel'), kernel
  yield 'vgg.extra_last_conv.bias', ('classifier', 'bias'), same
  # nn.Linear(D, D, bias=False) stores W as [out, in] and computes x W^T; the reference's
  # affinity is (F_m W^T) F_n^T, this project's F_m co_weight F_n^T: co_weight = W^T.
  yield 'extra_linear_e.weight', ('co_weight',), lambda w: np.ascontiguousarray(np.transpose(w))
  yield 'extra_gate.weight', ('co_classifier', 'kernel'), kernel  # co-attention classifier.
  yield 'extra_gate_merge.weight', ('gate', 'kernel'), kernel  # contrastive gate.


def coattention_from_reference(tensors: dict, src: str) -> tuple[dict, list[str], dict]:
  """(variables of models/coattention.py, ignored keys, the config fields the model needs)
  from the reference classifier's state dict."""
  keys = list(_coattention_keys())
  layout.require_all(
    tensors,
    [k for k, _, _ in keys],
    src,
    (
      "keys are the reference co-attention classifier's",
      'keys of the reference co-attention classifier',
    ),
    (
      'ImageNet VGG16 files import with --arch vgg16',
      'import the whole checkpoint its scripts/train.py saves (pascal_voc_epoch_N.pth)',
    ),
  )
  rank = {'kernel': 4, 'bias': 1, 'co_weight': 2}
  wrong = [
    f'{key}: {tensors[key].ndim}-d, expected {rank[path[-1]]}-d'
    for key, path, _ in keys
    if tensors[key].ndim != rank[path[-1]]
  ]
  if wrong:
    raise WeightsError(f'{src}: arrays of another layout: ' + ' | '.join(wrong))
  params, origin = {}, {}
  for key, path, conversion in keys:
    layout.put(params, path, conversion(tensors[key]))
    origin['params/' + '/'.join(path)] = key
  width = layout.width_of(tensors['vgg.features.0.weight'].shape[0], src, 'vgg.features.0.weight')
  num_classes = int(tensors['vgg.extra_last_conv.weight'].shape[0])
  dim = int(tensors['vgg.extra_convs.0.weight'].shape[0])
  fields = {
    'data.num_classes': num_classes,
    'model.width': width,
    'model.feature_dim': int(round(dim / width)),
    'model.norm': 'none',  # the reference VGG has no BatchNorm.
  }
  import jax
  import jax.numpy as jnp

  from cows_jax.models.coattention import CoAttentionNet

  model = CoAttentionNet(num_classes, width, fields['model.feature_dim'], norm='none')
  x = jnp.zeros((1, 32, 32, 3))
  expected = dict(jax.eval_shape(model.init, jax.random.key(0), x, x))
  variables = {'params': params}
  what = f'the reference co-attention classifier ({num_classes} classes, model.width={width:g})'
  layout.check_trained(variables, origin, expected, src, what)
  return variables, sorted(set(tensors) - {k for k, _, _ in keys}), fields
