"""Caffe weight files (.caffemodel) into this project's variables: ImageNet VGG16 and ResNet-101
(MSRA/DeepLab) backbones, and the released DeepLab-v2 ResNet-101 segmenter (LargeFOV of the
authors' deploy_resnet_fov.prototxt, or ASPP) into models/deeplab.py. Caffe weights expect BGR
input: the first conv's input channels are permuted to RGB."""

import os
import re

import numpy as np

from cows_jax.models.imported import WeightsError
from cows_jax.tools import weights_layout as layout


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


def vgg16_from_caffe(layers: dict) -> tuple[dict, list[str]]:
  """Backbone params from a Caffe VGG16 (layers conv1_1 ... conv5_3; BGR first conv)."""
  params = {}
  for name in layout.VGG16_NAMES:
    if name in layers and len(layers[name]) == 2:
      w, b = layers[name]
      if name == 'conv1_1':
        w = w[:, ::-1]
      params[name] = {'kernel': layout.conv_kernel(w), 'bias': np.asarray(b)}
  return {'params': params}, sorted(set(layers) - set(params))


def resnet101_from_caffe(layers: dict) -> tuple[dict, list[str]]:
  """The same from a Caffe (MSRA/DeepLab) ResNet-101: BatchNorm blobs (mean, var, moving
  average factor) + Scale blobs (gamma, beta); the first conv is turned from BGR to RGB."""
  params, frozen, used = {}, {}, set()
  for conv_path, bn_path, _, _, conv, bn, scale in layout.resnet_layers():
    if not all(k in layers for k in (conv, bn, scale)):
      continue
    w = layers[conv][0]
    layout.put(
      params, conv_path + ('kernel',), layout.conv_kernel(w[:, ::-1] if conv == 'conv1' else w)
    )
    mean, var, factor = (layers[bn] + [np.ones(1, np.float32)])[:3]
    factor = float(factor.ravel()[0]) or 1.0
    gamma, beta = layers[scale][:2]
    for name, value in (
      ('scale', gamma),
      ('bias', beta),
      ('mean', mean / factor),
      ('var', var / factor),
    ):
      layout.put(frozen, bn_path + (name,), np.asarray(value, np.float32).ravel())
    used |= {conv, bn, scale}
  return {'params': params, 'frozen_bn': frozen}, sorted(set(layers) - used)


# The LargeFOV head of the reference's deploy_resnet_fov.prototxt -> models/deeplab.py.
_LARGEFOV_LAYERS = (('pyram_conv1', 'fc6', 3, False), ('pyram_conv2', 'fc7', 1, False))


_LARGEFOV_SCORE = 'score'


_ASPP_LAYER = re.compile(r'^fc1_(.+)_c([0-3])$')  # DeepLab-v2's ASPP: fc1_voc12_c0 ... c3.


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
    params[name] = {'kernel': layout.conv_kernel(_oihw(blobs[0], size))}
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
    for *_, conv, bn, scale in layout.resnet_layers()
    for name, count in ((conv, 1), (bn, 2), (scale, 2))
  ]
  layout.require_all(
    layers,
    [name for name, _ in required],
    src,
    ('layers are DeepLab-v2 ResNet-101 layers', 'ResNet-101 layers'),
    ('another architecture?', 'a truncated or different model?'),
  )
  few = [f'{n} has {len(layers[n])} blobs, expected {c}' for n, c in required if len(layers[n]) < c]
  if few:
    raise WeightsError(f'{src}: ' + ' | '.join(few))
  head, head_params, origin, used, fields = _head_from_caffe(layers, src)
  backbone, ignored = resnet101_from_caffe(layers)
  for conv_path, bn_path, _, _, conv, bn, scale in layout.resnet_layers():
    origin['params/backbone/' + '/'.join(conv_path) + '/kernel'] = f'layer {conv} blob 0'
    for i, name in enumerate(('mean', 'var')):
      origin['frozen_bn/backbone/' + '/'.join(bn_path) + f'/{name}'] = f'layer {bn} blob {i}'
    for i, name in enumerate(('scale', 'bias')):
      origin['frozen_bn/backbone/' + '/'.join(bn_path) + f'/{name}'] = f'layer {scale} blob {i}'
  variables = {
    'params': {'backbone': backbone['params'], 'head': head_params},
    'frozen_bn': {'backbone': backbone['frozen_bn']},
  }
  width = layout.width_of(layers['conv1'][0].shape[0], src, 'layer conv1')
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
  layout.check_trained(variables, origin, expected, src, what)
  return variables, sorted(set(ignored) - set(used)), fields
