"""The layouts the weight converters share (tools/weights_torch.py, tools/weights_caffe.py):
VGG16's and ResNet-101's layer names in torchvision, Caffe and this project, kernels from OIHW
to HWIO, and the check of converted arrays against a model's shapes."""

import numpy as np

from cows_jax.models.imported import WeightsError, flatten


def require_all(
  found, required: list[str], src: str, names: tuple[str, str], hints: tuple[str, str]
):
  """A WeightsError unless `found` holds every name of `required`. With none of them the file
  is another model: the message shows a few of its own names. With some, it lists the missing
  ones. `names`: how the messages name what is looked for, (none of its ..., N ... are
  missing); `hints`: what the user does in each case."""
  missing = [name for name in required if name not in found]
  if len(missing) == len(required):
    first = ', '.join(sorted(found)[:4])
    raise WeightsError(f'{src}: none of its {names[0]} (it has {first}, ...); {hints[0]}')
  if missing:
    listed = ', '.join(missing)
    raise WeightsError(f'{src}: {len(missing)} {names[1]} are missing: {listed}; {hints[1]}')


# torchvision's vgg16 `features` indices of the 13 convs, in VGG16 order.
VGG16_FEATURE_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)


VGG16_NAMES = tuple(
  f'conv{b}_{i}' for b, n in enumerate((2, 2, 3, 3, 3), start=1) for i in range(1, n + 1)
)


def conv_kernel(w: np.ndarray) -> np.ndarray:
  """OIHW (PyTorch, Caffe) -> HWIO (flax)."""
  return np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0)))


def resnet_blocks(stage_sizes):
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


def resnet_layers():
  """Per conv + batch norm: (flax conv path, flax bn path, torchvision conv and bn prefixes,
  Caffe conv, BatchNorm and Scale layer names)."""
  from cows_jax.models.resnet import RESNET101_STAGES

  yield ('conv1',), ('bn1',), 'conv1', 'bn1', 'conv1', 'bn_conv1', 'scale_conv1'
  for layer, b, c in resnet_blocks(RESNET101_STAGES):
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


def put(tree, path, value):
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = value


def source_shape(shape: tuple) -> tuple:
  """A converted array's shape in the source's layout: HWIO -> OIHW, [in, out] -> [out, in]."""
  shape = tuple(shape)
  if len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  return shape[::-1]


def check_trained(variables: dict, origin: dict, expected: dict, src: str, what: str) -> None:
  """One error naming, in the file's own key names and layout, every array whose shape does
  not fit `expected` (the model the file's own leading layers describe)."""
  got, want = flatten(variables), flatten(expected)
  problems = [f'{origin.get(k, k)} is missing' for k in sorted(set(want) - set(got))]
  problems += [
    f'{origin[k]}: file {source_shape(got[k].shape)}, expected {source_shape(want[k].shape)}'
    for k in sorted(set(want) & set(got))
    if tuple(got[k].shape) != tuple(want[k].shape)
  ]
  problems += [f'{origin.get(k, k)} is not in the model' for k in sorted(set(got) - set(want))]
  if problems:
    raise WeightsError(f'{src} does not fit {what}: ' + ' | '.join(problems))


def width_of(channels: int, src: str, key: str) -> float:
  """model.width of a file whose first conv has `channels` outputs (64 at full size)."""
  if channels < 4:
    raise WeightsError(f'{src}: {key} has {channels} output channels; expected 64 (VGG/ResNet)')
  return channels / 64
