"""`cows-jax weights import`: local weight files into this project's formats.

ImageNet backbones (`--arch vgg16`, `resnet101`): the paper starts every network from ImageNet
weights; users download those themselves and this tool converts them once: torchvision/timm
state dicts (.pth/.pt/.bin or .safetensors) and Caffe models (.caffemodel), written as an
orbax checkpoint of backbone variables plus `provenance.json` (models/pretrained.py reads both
at run time).

The authors' trained models (`--arch coattention_vgg16`, `deeplab_v2_resnet101`): the
classifier checkpoint the reference's Classifier/scripts/train.py saves, and the released
DeepLab-v2 ResNet-101 LargeFOV segmenter (.caffemodel of deploy_resnet_fov.prototxt), whole,
written into a run directory as the checkpoints `localize` and `evaluate` restore.

Caffe weights expect BGR input; the importer permutes the first conv's input channels so
every network here takes RGB, and records the Caffe mean (on the 0..1 scale, std 1/255).
"""

import hashlib
import os
import re
import sys

import numpy as np
import orbax.checkpoint as ocp

from cows_jax import run_dir
from cows_jax.models.pretrained import (
  CAFFE_INPUT,
  TORCHVISION_INPUT,
  WeightsError,
  check_against,
  flatten,
)

BACKBONE_ARCHS = ('vgg16', 'resnet101')
TRAINED_ARCHS = ('coattention_vgg16', 'deeplab_v2_resnet101')
ARCHS = BACKBONE_ARCHS + TRAINED_ARCHS

# torchvision's vgg16 `features` indices of the 13 convs, in VGG16 order.
_VGG16_FEATURE_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
_VGG16_NAMES = tuple(
  f'conv{b}_{i}' for b, n in enumerate((2, 2, 3, 3, 3), start=1) for i in range(1, n + 1)
)


# ---------------------------------------------------------------- reading files


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


def _caffe_messages():
  """NetParameter/LayerParameter/BlobProto built from the fields of caffe.proto that hold
  weights (no Caffe install, no protoc): unknown fields are skipped when parsing."""
  from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

  F = descriptor_pb2.FieldDescriptorProto
  fdp = descriptor_pb2.FileDescriptorProto(
    name='cows_caffe_subset.proto', package='caffe', syntax='proto2'
  )

  def message(name, fields):
    m = fdp.message_type.add(name=name)
    for fname, number, ftype, label, type_name in fields:
      f = m.field.add(name=fname, number=number, type=ftype, label=label)
      if type_name:
        f.type_name = '.caffe.' + type_name
      if label == F.LABEL_REPEATED and ftype in (F.TYPE_FLOAT, F.TYPE_INT64, F.TYPE_DOUBLE):
        f.options.packed = True

  opt, rep = F.LABEL_OPTIONAL, F.LABEL_REPEATED
  message('BlobShape', [('dim', 1, F.TYPE_INT64, rep, None)])
  message(
    'BlobProto',
    [
      ('shape', 7, F.TYPE_MESSAGE, opt, 'BlobShape'),
      ('data', 5, F.TYPE_FLOAT, rep, None),
      ('double_data', 8, F.TYPE_DOUBLE, rep, None),
      ('num', 1, F.TYPE_INT32, opt, None),
      ('channels', 2, F.TYPE_INT32, opt, None),
      ('height', 3, F.TYPE_INT32, opt, None),
      ('width', 4, F.TYPE_INT32, opt, None),
    ],
  )
  message(
    'LayerParameter',
    [
      ('name', 1, F.TYPE_STRING, opt, None),
      ('type', 2, F.TYPE_STRING, opt, None),
      ('blobs', 7, F.TYPE_MESSAGE, rep, 'BlobProto'),
    ],
  )
  message(
    'V1LayerParameter',
    [('name', 4, F.TYPE_STRING, opt, None), ('blobs', 6, F.TYPE_MESSAGE, rep, 'BlobProto')],
  )
  message(
    'NetParameter',
    [
      ('name', 1, F.TYPE_STRING, opt, None),
      ('layer', 100, F.TYPE_MESSAGE, rep, 'LayerParameter'),
      ('layers', 2, F.TYPE_MESSAGE, rep, 'V1LayerParameter'),
    ],
  )
  pool = descriptor_pool.DescriptorPool()
  pool.Add(fdp)
  return {
    name: message_factory.GetMessageClass(pool.FindMessageTypeByName('caffe.' + name))
    for name in ('NetParameter', 'LayerParameter', 'BlobProto', 'BlobShape')
  }


def _blob_array(blob) -> np.ndarray:
  if blob.HasField('shape'):
    shape = tuple(blob.shape.dim)
  else:  # legacy 4-d blobs; leading 1s are squeezed below.
    shape = (blob.num, blob.channels, blob.height, blob.width)
  data = np.asarray(blob.data if len(blob.data) else blob.double_data, np.float32)
  if data.size != int(np.prod(shape)):
    raise WeightsError(f'blob of shape {shape} holds {data.size} values')
  data = data.reshape(shape)
  return data if blob.HasField('shape') else data.reshape(tuple(d for d in shape if d != 1) or (1,))


def read_caffemodel(path: str) -> dict[str, list[np.ndarray]]:
  """Layer name -> its blobs, from a binary .caffemodel."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'weights file {path} does not exist')
  from google.protobuf.message import DecodeError

  net = _caffe_messages()['NetParameter']()
  with open(path, 'rb') as f:
    data = f.read()
  try:
    net.ParseFromString(data)
  except DecodeError as e:
    raise WeightsError(f'{path}: not a readable caffemodel ({e}); truncated download?') from e
  layers = list(net.layer) or list(net.layers)
  if not layers:
    raise WeightsError(f'{path}: no layers found; not a caffemodel')
  try:
    return {layer.name: [_blob_array(b) for b in layer.blobs] for layer in layers if layer.blobs}
  except WeightsError as e:
    raise WeightsError(f'{path}: {e}') from e


# ---------------------------------------------------------------- conversions


def _conv_kernel(w: np.ndarray) -> np.ndarray:
  """OIHW (PyTorch, Caffe) -> HWIO (flax)."""
  return np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0)))


def vgg16_from_torchvision(tensors: dict) -> tuple[dict, list[str]]:
  """Backbone params of models/vgg.py from torchvision/timm vgg16 keys; returns (params,
  keys of the file that were not used, e.g. the fc classifier)."""
  params, used = {}, set()
  for index, name in zip(_VGG16_FEATURE_CONVS, _VGG16_NAMES):
    w, b = f'features.{index}.weight', f'features.{index}.bias'
    if w in tensors and b in tensors:
      params[name] = {'kernel': _conv_kernel(tensors[w]), 'bias': np.asarray(tensors[b])}
      used |= {w, b}
  return {'params': params}, sorted(set(tensors) - used)


def vgg16_from_caffe(layers: dict) -> tuple[dict, list[str]]:
  """Backbone params from a Caffe VGG16 (layers conv1_1 ... conv5_3; BGR first conv)."""
  params = {}
  for name in _VGG16_NAMES:
    if name in layers and len(layers[name]) == 2:
      w, b = layers[name]
      if name == 'conv1_1':
        w = w[:, ::-1]
      params[name] = {'kernel': _conv_kernel(w), 'bias': np.asarray(b)}
  return {'params': params}, sorted(set(layers) - set(params))


# ---------------------------------------------------------------- import


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      h.update(chunk)
  return h.hexdigest()


def _resnet_blocks(stage_sizes):
  """(torchvision layer name, block index, Caffe block name) of every bottleneck."""
  for i, n in enumerate(stage_sizes):
    for b in range(n):
      if b == 0:
        caffe = f'{i + 2}a'
      elif n > 3:  # res3 and res4 of ResNet-101: b1, b2, ...
        caffe = f'{i + 2}b{b}'
      else:
        caffe = f'{i + 2}{chr(ord("a") + b)}'
      yield f'layer{i + 1}', b, caffe


def _resnet_layers():
  """Per conv + batch norm: (flax conv path, flax bn path, torchvision conv and bn prefixes,
  Caffe conv, BatchNorm and Scale layer names)."""
  from cows_jax.models.resnet import RESNET101_STAGES

  yield ('conv1',), ('bn1',), 'conv1', 'bn1', 'conv1', 'bn_conv1', 'scale_conv1'
  for layer, b, c in _resnet_blocks(RESNET101_STAGES):
    for k, branch in ((1, '2a'), (2, '2b'), (3, '2c')):
      yield (
        (layer, str(b), f'conv{k}'),
        (layer, str(b), f'bn{k}'),
        f'{layer}.{b}.conv{k}',
        f'{layer}.{b}.bn{k}',
        f'res{c}_branch{branch}',
        f'bn{c}_branch{branch}',
        f'scale{c}_branch{branch}',
      )
    if b == 0:
      yield (
        (layer, '0', 'downsample', '0'),
        (layer, '0', 'downsample', '1'),
        f'{layer}.0.downsample.0',
        f'{layer}.0.downsample.1',
        f'res{c}_branch1',
        f'bn{c}_branch1',
        f'scale{c}_branch1',
      )


def _put(tree, path, value):
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = value


def resnet101_from_torchvision(tensors: dict) -> tuple[dict, list[str]]:
  """params (conv kernels) and frozen_bn (scale, bias, mean, var) of models/resnet.py from
  torchvision/timm resnet101 keys."""
  params, frozen, used = {}, {}, set()
  for conv_path, bn_path, conv, bn, *_ in _resnet_layers():
    keys = {
      f'{conv}.weight': 'kernel',
      f'{bn}.weight': 'scale',
      f'{bn}.bias': 'bias',
      f'{bn}.running_mean': 'mean',
      f'{bn}.running_var': 'var',
    }
    if not all(k in tensors for k in keys):
      continue
    _put(params, conv_path + ('kernel',), _conv_kernel(tensors[f'{conv}.weight']))
    for k, name in list(keys.items())[1:]:
      _put(frozen, bn_path + (name,), np.asarray(tensors[k], np.float32))
    used |= set(keys) | {f'{bn}.num_batches_tracked'}
  return {'params': params, 'frozen_bn': frozen}, sorted(set(tensors) - used)


def resnet101_from_caffe(layers: dict) -> tuple[dict, list[str]]:
  """The same from a Caffe (MSRA/DeepLab) ResNet-101: BatchNorm blobs (mean, var, moving
  average factor) + Scale blobs (gamma, beta); the first conv is turned from BGR to RGB."""
  params, frozen, used = {}, {}, set()
  for conv_path, bn_path, _, _, conv, bn, scale in _resnet_layers():
    if not all(k in layers for k in (conv, bn, scale)):
      continue
    w = layers[conv][0]
    _put(params, conv_path + ('kernel',), _conv_kernel(w[:, ::-1] if conv == 'conv1' else w))
    mean, var, factor = (layers[bn] + [np.ones(1, np.float32)])[:3]
    factor = float(factor.ravel()[0]) or 1.0
    gamma, beta = layers[scale][:2]
    for name, value in (
      ('scale', gamma),
      ('bias', beta),
      ('mean', mean / factor),
      ('var', var / factor),
    ):
      _put(frozen, bn_path + (name,), np.asarray(value, np.float32).ravel())
    used |= {conv, bn, scale}
  return {'params': params, 'frozen_bn': frozen}, sorted(set(layers) - used)


CONVERTERS = {
  ('vgg16', 'torchvision'): vgg16_from_torchvision,
  ('vgg16', 'caffe'): vgg16_from_caffe,
  ('resnet101', 'torchvision'): resnet101_from_torchvision,
  ('resnet101', 'caffe'): resnet101_from_caffe,
}


def expected_variables(arch: str) -> dict:
  """Shapes of the full-size backbone's variables ({'params': ..., ...})."""
  import jax
  import jax.numpy as jnp

  from cows_jax.models.resnet import ResNet
  from cows_jax.models.vgg import VGG16LargeFOV

  models = {'vgg16': VGG16LargeFOV, 'resnet101': ResNet}
  x = jnp.zeros((1, 32, 32, 3))
  return dict(jax.eval_shape(models[arch]().init, jax.random.key(0), x))


def convert(arch: str, src: str) -> tuple[dict, list[str], dict]:
  """(backbone variables, ignored file keys, input convention) of a weights file."""
  if arch not in BACKBONE_ARCHS:
    raise WeightsError(f'unknown backbone arch {arch!r} (known: {", ".join(BACKBONE_ARCHS)})')
  caffe = src.endswith('.caffemodel')
  if caffe:
    tensors = read_caffemodel(src)
    convention = CAFFE_INPUT
  else:
    tensors = read_state_dict(src)
    convention = TORCHVISION_INPUT
  fmt = 'caffe' if caffe else 'torchvision'
  if (arch, fmt) not in CONVERTERS:
    raise WeightsError(
      f'{src}: no {fmt} converter for {arch} (have: {", ".join("/".join(k) for k in CONVERTERS)})'
    )
  converter = CONVERTERS[(arch, fmt)]
  variables, ignored = converter(tensors)
  if not flatten(variables):
    raise WeightsError(
      f'{src}: none of its keys are {fmt} {arch} backbone keys (it has '
      f'{", ".join(sorted(tensors)[:5])}, ...); another architecture?'
    )
  check_against(variables, expected_variables(arch), src)
  return variables, ignored, convention


def _write_weights_dir(out: str, variables: dict, provenance: dict) -> None:
  """DIR/backbone (orbax) and then DIR/provenance.json, which marks the directory usable."""
  ckpt = os.path.join(os.path.abspath(out), 'backbone')
  if os.path.exists(ckpt):
    raise WeightsError(f'{ckpt} exists; choose a new --out directory')
  os.makedirs(out, exist_ok=True)
  with ocp.StandardCheckpointer() as ckptr:  # writes to a tmp dir, then renames.
    ckptr.save(ckpt, variables)
  run_dir.write_json(os.path.join(out, 'provenance.json'), provenance)


def import_weights(arch: str, src: str, out: str) -> dict:
  """Convert `src` and write DIR/backbone (orbax) + DIR/provenance.json; returns provenance."""
  variables, ignored, convention = convert(arch, src)
  provenance = {
    'arch': arch,
    'source': os.path.abspath(src),
    'sha256': _sha256(src),
    'format': 'caffe' if src.endswith('.caffemodel') else 'torchvision',
    'input': convention,
    'ignored_keys': ignored,
  }
  if arch == 'resnet101':  # where the stride of a downsampling block sits (models/resnet.py).
    provenance['stride_in_1x1'] = provenance['format'] == 'caffe'
  _write_weights_dir(out, variables, provenance)
  return provenance


# ---------------------------------------------------------------- the authors' trained models

# The reference segmenter's solver (segmentation/examples/seg/exp2/solver_res.prototxt):
# max_iter 16000 with iter_size 10, i.e. 160,000 micro steps in this project's counting
# (segment.iterations x segment.accumulation_steps of the paper config).
REFERENCE_SEGMENTER_STEPS = 16000 * 10
# The LargeFOV head of the reference's deploy_resnet_fov.prototxt -> models/deeplab.py.
_LARGEFOV_LAYERS = (('pyram_conv1', 'fc6', 3, False), ('pyram_conv2', 'fc7', 1, False))
_LARGEFOV_SCORE = 'score'
_ASPP_LAYER = re.compile(r'^fc1_(.+)_c([0-3])$')  # DeepLab-v2's ASPP: fc1_voc12_c0 ... c3.


def _coattention_keys():
  """(state dict key, flax params path, conversion) of every tensor of the reference's
  `coattentionmodel` (Classifier/models/vgg.py), without DataParallel's `module.`."""
  kernel, same = _conv_kernel, lambda a: np.asarray(a, np.float32)
  for index, name in zip(_VGG16_FEATURE_CONVS, _VGG16_NAMES):  # cfg 'D1': torchvision's indices.
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


def _source_shape(shape: tuple) -> tuple:
  """A converted array's shape in the source's layout: HWIO -> OIHW, [in, out] -> [out, in]."""
  shape = tuple(shape)
  if len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  return shape[::-1]


def _check_trained(variables: dict, origin: dict, expected: dict, src: str, what: str) -> None:
  """One error naming, in the file's own key names and layout, every array whose shape does
  not fit `expected` (the model the file's own leading layers describe)."""
  got, want = flatten(variables), flatten(expected)
  problems = [f'{origin.get(k, k)} is missing' for k in sorted(set(want) - set(got))]
  problems += [
    f'{origin[k]}: file {_source_shape(got[k].shape)}, expected {_source_shape(want[k].shape)}'
    for k in sorted(set(want) & set(got))
    if tuple(got[k].shape) != tuple(want[k].shape)
  ]
  problems += [f'{origin.get(k, k)} is not in the model' for k in sorted(set(got) - set(want))]
  if problems:
    raise WeightsError(f'{src} does not fit {what}: ' + ' | '.join(problems))


def _width(channels: int, src: str, key: str) -> float:
  """model.width of a file whose first conv has `channels` outputs (64 at full size)."""
  if channels < 4:
    raise WeightsError(f'{src}: {key} has {channels} output channels; expected 64 (VGG/ResNet)')
  return channels / 64


def coattention_from_reference(tensors: dict, src: str) -> tuple[dict, list[str], dict]:
  """(variables of models/coattention.py, ignored keys, the config fields the model needs)
  from the reference classifier's state dict."""
  keys = list(_coattention_keys())
  missing = [k for k, _, _ in keys if k not in tensors]
  if len(missing) == len(keys):
    raise WeightsError(
      f"{src}: none of its keys are the reference co-attention classifier's (it has "
      f'{", ".join(sorted(tensors)[:4])}, ...); ImageNet VGG16 files import with --arch vgg16'
    )
  if missing:
    raise WeightsError(
      f'{src}: {len(missing)} keys of the reference co-attention classifier are missing: '
      f'{", ".join(missing)}; import the whole checkpoint its scripts/train.py saves '
      '(pascal_voc_epoch_N.pth)'
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
    _put(params, path, conversion(tensors[key]))
    origin['params/' + '/'.join(path)] = key
  width = _width(tensors['vgg.features.0.weight'].shape[0], src, 'vgg.features.0.weight')
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
  _check_trained(variables, origin, expected, src, what)
  return variables, sorted(set(tensors) - {k for k, _, _ in keys}), fields


def _oihw(w: np.ndarray, size: int) -> np.ndarray:
  """A Caffe conv weight as OIHW (legacy blobs squeeze the 1s of a 1x1 kernel)."""
  return w if w.ndim == 4 else w.reshape(w.shape[0], -1, size, size)


def _head_from_caffe(layers: dict, src: str) -> tuple[str, dict, dict, list[str], dict]:
  """(segment.head, head params, origin, head layers used, config fields) of the segmenter's
  head: the authors' LargeFOV (pyram_conv1, pyram_conv2, score) or DeepLab-v2's ASPP."""
  params, origin, problems = {}, {}, []

  def conv(layer, name, size, bias):
    blobs = layers[layer]
    if len(blobs) != 1 + bias:
      has = 'a bias' if len(blobs) > 1 else 'no bias'
      problems.append(f'{layer} has {has}; the model expects {"one" if bias else "none"}')
      return
    params[name] = {'kernel': _conv_kernel(_oihw(blobs[0], size))}
    origin[f'params/head/{name}/kernel'] = f'layer {layer} blob 0'
    if bias:
      params[name]['bias'] = np.asarray(blobs[1], np.float32).ravel()
      origin[f'params/head/{name}/bias'] = f'layer {layer} blob 1'

  largefov = [name for name, *_ in _LARGEFOV_LAYERS] + [_LARGEFOV_SCORE]
  aspp = {}
  for layer in layers:
    match = _ASPP_LAYER.match(layer)
    if match:
      aspp.setdefault(match.group(1), {})[int(match.group(2))] = layer
  aspp = [v for v in aspp.values() if len(v) == 4]
  if all(name in layers for name in largefov):
    for layer, name, size, bias in _LARGEFOV_LAYERS:
      conv(layer, name, size, bias)
    conv(_LARGEFOV_SCORE, 'fc8', 1, True)
    head, used = 'largefov', largefov
  elif len(aspp) == 1:
    used = [aspp[0][i] for i in range(4)]
    for i, layer in enumerate(used):
      conv(layer, f'c{i}', 3, True)
    head = 'aspp'
  else:
    present = [name for name in largefov if name in layers]
    raise WeightsError(
      f'{src}: no segmenter head: expected the LargeFOV layers {", ".join(largefov)} of the '
      f"authors' deploy_resnet_fov.prototxt (found {', '.join(present) or 'none'}) or "
      "DeepLab-v2's ASPP fc1_*_c0..c3; a backbone-only init.caffemodel imports with "
      '--arch resnet101'
    )
  if problems:
    raise WeightsError(f'{src}: ' + ' | '.join(problems))
  if head == 'largefov':
    fields = {
      'segment.head': 'largefov',
      'segment.head_dilation': 12,  # the prototxt's pyram_conv1: 3x3, dilation 12.
      'num_classes': int(params['fc8']['kernel'].shape[-1]),
      'head_out': int(params['fc6']['kernel'].shape[-1]),
    }
  else:
    fields = {
      'segment.head': 'aspp',
      'segment.aspp_rates': (6, 12, 18, 24),  # DeepLab-v2's ASPP-L rates.
      'num_classes': int(params['c0']['kernel'].shape[-1]),
    }
  return head, params, origin, used, fields


def deeplab_from_caffe(layers: dict, src: str) -> tuple[dict, list[str], dict]:
  """(variables of models/deeplab.py with a ResNet-101 backbone, ignored layers, the config
  fields the model needs) from a trained DeepLab-v2 ResNet-101 .caffemodel."""
  required = [
    (name, count)
    for *_, conv, bn, scale in _resnet_layers()
    for name, count in ((conv, 1), (bn, 2), (scale, 2))
  ]
  missing = [name for name, _ in required if name not in layers]
  if len(missing) == len(required):
    raise WeightsError(
      f'{src}: none of its layers are DeepLab-v2 ResNet-101 layers (it has '
      f'{", ".join(sorted(layers)[:4])}, ...); another architecture?'
    )
  if missing:
    raise WeightsError(
      f'{src}: {len(missing)} ResNet-101 layers are missing: {", ".join(missing)}; '
      'a truncated or different model?'
    )
  few = [f'{n} has {len(layers[n])} blobs, expected {c}' for n, c in required if len(layers[n]) < c]
  if few:
    raise WeightsError(f'{src}: ' + ' | '.join(few))
  head, head_params, origin, used, fields = _head_from_caffe(layers, src)
  backbone, ignored = resnet101_from_caffe(layers)
  for conv_path, bn_path, _, _, conv, bn, scale in _resnet_layers():
    origin['params/backbone/' + '/'.join(conv_path) + '/kernel'] = f'layer {conv} blob 0'
    for i, name in enumerate(('mean', 'var')):
      origin['frozen_bn/backbone/' + '/'.join(bn_path) + f'/{name}'] = f'layer {bn} blob {i}'
    for i, name in enumerate(('scale', 'bias')):
      origin['frozen_bn/backbone/' + '/'.join(bn_path) + f'/{name}'] = f'layer {scale} blob {i}'
  variables = {
    'params': {'backbone': backbone['params'], 'head': head_params},
    'frozen_bn': {'backbone': backbone['frozen_bn']},
  }
  width = _width(layers['conv1'][0].shape[0], src, 'layer conv1')
  num_classes = fields.pop('num_classes')
  out = fields.pop('head_out', None)
  fields = {
    'data.num_classes': num_classes - 1,  # the segmenter's classes include the background.
    'model.width': width,
    'segment.backbone': 'resnet101',
    **fields,
    **({'segment.head_channels': int(round(out / width))} if out is not None else {}),
  }
  import jax
  import jax.numpy as jnp

  from cows_jax.models.deeplab import DeepLab

  model = DeepLab(
    num_classes,
    backbone='resnet101',
    head=head,
    width=width,
    head_channels=fields.get('segment.head_channels', 1024),
    head_dilation=fields.get('segment.head_dilation', 12),
    aspp_rates=fields.get('segment.aspp_rates', (6, 12, 18, 24)),
    stride_in_1x1=True,
  )
  expected = dict(jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 33, 33, 3))))
  what = f'DeepLab-v2 ResNet-101 with the {head} head ({num_classes} outputs, width {width:g})'
  _check_trained(variables, origin, expected, src, what)
  return variables, sorted(set(ignored) - set(used)), fields


def _converted(converter, arrays: dict, src: str):
  """`converter(arrays, src)`, with arrays of an unexpected rank or size (which numpy
  rejects while converting) reported as a one-line WeightsError."""
  try:
    return converter(arrays, src)
  except WeightsError:
    raise
  except (ValueError, IndexError) as e:
    raise WeightsError(f'{src}: an array of unexpected rank or size ({e})') from e


def _save_variables(directory, step: int, variables: dict) -> None:
  """A run directory's checkpoint of `variables` alone (what `localize` and `evaluate`
  restore; there is no optimizer state to resume training from)."""
  from cows_jax import checkpoints

  mngr = checkpoints.manager(directory)
  mngr.save(step, args=ocp.args.Composite(variables=ocp.args.StandardSave(variables)))
  mngr.wait_until_finished()
  mngr.close()


def import_trained(arch: str, src: str, out: str, epochs: int | None = None) -> dict:
  """The authors' trained classifier (coattention_vgg16, a checkpoint of the reference's
  train.py) or segmenter (deeplab_v2_resnet101, the released .caffemodel) into the run
  directory `out`:

    WORKDIR/classifier/<step> + epochs.json   or   WORKDIR/segmenter/<step>
    WORKDIR/imported/<arch>/{backbone,provenance.json}

  The second is an imported-weights directory (the model's backbone and its input
  convention) for model.init_from / segment.init_from, so the stages normalize inputs as
  the model was trained. Returns its provenance."""
  if arch not in TRAINED_ARCHS:
    raise WeightsError(f'unknown trained-model arch {arch!r} (known: {", ".join(TRAINED_ARCHS)})')
  run = run_dir.RunDir(out)
  if arch == 'coattention_vgg16':
    if src.endswith(('.caffemodel', '.safetensors')):
      raise WeightsError(f"{src}: coattention_vgg16 reads the .pth the reference's train.py saves")
    tensors, meta = read_training_checkpoint(src)
    variables, ignored, fields = _converted(coattention_from_reference, tensors, src)
    if epochs is None and meta['epoch'] is None:
      raise WeightsError(
        f"{src}: no 'epoch' field (the reference's train.py saves the 0-based epoch); pass "
        '--epochs N, the number of epochs it was trained for'
      )
    epochs = meta['epoch'] + 1 if epochs is None else epochs
    if epochs < 1:
      raise WeightsError(f'--epochs={epochs}: expected a positive number of epochs')
    counter = meta['global_counter']  # steps so far: steps per epoch x epochs.
    per_epoch = counter // epochs if counter and counter % epochs == 0 else 1
    step, directory, fmt = per_epoch * epochs, run.classifier(), 'pytorch'
    fields['classify.localize_after_epochs'] = epochs
    backbone = {'params': variables['params']['backbone']}
    backbone_arch, convention = 'vgg16', TORCHVISION_INPUT
  else:
    if not src.endswith('.caffemodel'):
      raise WeightsError(f'{src}: deeplab_v2_resnet101 reads a .caffemodel')
    variables, ignored, fields = _converted(deeplab_from_caffe, read_caffemodel(src), src)
    step, directory, fmt = REFERENCE_SEGMENTER_STEPS, run.segmenter(), 'caffe'
    backbone = {col: tree['backbone'] for col, tree in variables.items()}
    backbone_arch, convention = 'resnet101', CAFFE_INPUT
  weights = run.root / 'imported' / arch
  for target in (directory, weights):
    if target.exists():
      raise WeightsError(f'{target} exists; import into a new --out WORKDIR')
  provenance = {
    'arch': backbone_arch,
    'source': os.path.abspath(src),
    'sha256': _sha256(src),
    'format': fmt,
    'input': convention,
    'ignored_keys': ignored,
    'trained_model': {
      'arch': arch,
      'checkpoint': os.fspath(directory / str(step)),
      'step': step,
      'init_from': os.fspath(weights),
      'config': fields,
    },
  }
  if arch == 'deeplab_v2_resnet101':
    provenance['stride_in_1x1'] = True  # Caffe/MSRA: the stride on the first 1x1 conv.
  _save_variables(directory, step, variables)
  if arch == 'coattention_vgg16':
    run_dir.write_classifier_epochs(run, per_epoch, epochs)
  _write_weights_dir(os.fspath(weights), backbone, provenance)
  return provenance


def config_flags(provenance: dict) -> str:
  """The --config.FIELD=VALUE flags the stages need for an imported trained model: its
  weights directory as model.init_from / segment.init_from, and the fields of its shape."""
  import shlex

  trained = provenance['trained_model']
  init = 'model.init_from' if trained['arch'] == 'coattention_vgg16' else 'segment.init_from'
  flags = [f'--config.{init}={trained["init_from"]}']
  flags += [f'--config.{field}={value}' for field, value in trained['config'].items()]
  return ' '.join(shlex.quote(f) for f in flags)


def main(argv: list[str]) -> int:
  """`cows-jax weights import --arch ARCH --src FILE --out DIR`."""
  import argparse

  parser = argparse.ArgumentParser(prog='cows-jax weights', description=__doc__.split('\n')[0])
  sub = parser.add_subparsers(dest='command', required=True)
  imp = sub.add_parser(
    'import',
    help='convert a local weights file into DIR',
    description='ImageNet backbones (vgg16, resnet101) into a new weights directory DIR, for '
    "model.init_from / segment.init_from; the authors' trained classifier "
    "(coattention_vgg16, a .pth of the reference's train.py) or segmenter "
    '(deeplab_v2_resnet101, the released .caffemodel) into the run directory WORKDIR, '
    'for localize / evaluate.',
  )
  imp.add_argument('--arch', required=True, choices=ARCHS)
  imp.add_argument('--src', required=True, help='.pth/.pt/.bin, .safetensors or .caffemodel')
  imp.add_argument(
    '--out',
    required=True,
    help='vgg16, resnet101: a new directory for the converted weights; coattention_vgg16, '
    'deeplab_v2_resnet101: the run directory (WORKDIR) that receives the model',
  )
  imp.add_argument(
    '--epochs',
    type=int,
    default=None,
    help="coattention_vgg16: the epochs the checkpoint was trained for (default: its 'epoch' "
    'field + 1, as the reference saves it)',
  )
  args = parser.parse_args(argv)
  if args.epochs is not None and args.arch != 'coattention_vgg16':
    parser.error('--epochs applies to --arch coattention_vgg16 only')
  try:
    if args.arch in TRAINED_ARCHS:
      provenance = import_trained(args.arch, args.src, args.out, args.epochs)
    else:
      provenance = import_weights(args.arch, args.src, args.out)
  except (FileNotFoundError, WeightsError) as e:
    print(f'cows-jax weights import: error: {e}', file=sys.stderr)
    return 1
  if args.arch in TRAINED_ARCHS:
    trained = provenance['trained_model']
    print(
      f'imported {args.arch} ({provenance["format"]}, sha256 {provenance["sha256"][:12]}) '
      f'-> {trained["checkpoint"]}; input convention: {provenance["input"]["name"]}'
    )
    stages = 'localize' if args.arch == 'coattention_vgg16' else 'evaluate, predict-split, export'
    print(f'run {stages} on --workdir {args.out} with: {config_flags(provenance)}')
  else:
    print(
      f'imported {args.arch} ({provenance["format"]}, sha256 {provenance["sha256"][:12]}) '
      f'-> {args.out}; input convention: {provenance["input"]["name"]}'
    )
  if provenance['ignored_keys']:
    print(
      f'ignored {len(provenance["ignored_keys"])} keys not in the model: '
      f'{", ".join(provenance["ignored_keys"][:8])}'
      f'{" ..." if len(provenance["ignored_keys"]) > 8 else ""}'
    )
  return 0
