"""Imported ImageNet backbones at run time: the directories `cows-jax weights import` writes.

A directory holds `backbone/` (an orbax checkpoint of the backbone's variables) and
`provenance.json` (source file and sha256, arch, and the input convention the weights expect).
`model.init_from` and `segment.init_from` point at one: only the backbone is loaded, new layers
keep their own initialization, and `config.finalize` takes the input mean/std from here.
The synthetic world's stand-in backbones (imagenet_standin/) are written in the same layout
and load the same way.
"""

import json
import os

import orbax.checkpoint as ocp
from etils import epath

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Input conventions: mean and std on the 0..1 scale of RGB images.
TORCHVISION_INPUT = {'name': 'torchvision', 'mean': IMAGENET_MEAN, 'std': IMAGENET_STD}
CAFFE_BGR_MEAN = (104.008, 116.669, 122.675)
CAFFE_INPUT = {
  'name': 'caffe',
  'mean': tuple(m / 255.0 for m in CAFFE_BGR_MEAN[::-1]),
  'std': (1.0 / 255.0,) * 3,
}


class WeightsError(ValueError):
  """A weights file that cannot be used, with every problem listed."""


def check_against(variables: dict, expected: dict, source: str) -> None:
  """One error listing every missing key and every shape mismatch against the model."""
  got, want = flatten(variables), flatten(expected)
  missing = sorted(set(want) - set(got))
  wrong = sorted(
    f'{k}: file {got[k].shape}, model {tuple(want[k].shape)}'
    for k in set(want) & set(got)
    if tuple(got[k].shape) != tuple(want[k].shape)
  )
  unexpected = sorted(set(got) - set(want))
  problems = (
    ([f'missing: {", ".join(missing)}'] if missing else [])
    + ([f'shape mismatch: {"; ".join(wrong)}'] if wrong else [])
    + ([f'not in the model: {", ".join(unexpected)}'] if unexpected else [])
  )
  if problems:
    raise WeightsError(f'{source} does not fit the backbone: ' + ' | '.join(problems))


def flatten(tree, prefix=''):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(flatten(v, f'{prefix}{k}/'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def read_provenance(init_from: str) -> dict:
  path = epath.Path(init_from) / 'provenance.json'
  try:
    return json.loads(path.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise FileNotFoundError(
      f'model.init_from={init_from}: {path} is missing or unreadable '
      f'({e}); make it with `cows-jax weights import`'
    ) from e


def load_backbone(init_from: str, arch: str, like: dict) -> dict:
  """Backbone variables from an imported directory, checked against the model's `like`
  (e.g. {'params': ...}); a width-scaled model cannot take full-size weights."""
  provenance = read_provenance(init_from)
  if provenance['arch'] != arch:
    raise WeightsError(
      f'model.init_from={init_from} holds {provenance["arch"]} weights, the model needs {arch}'
    )
  with ocp.StandardCheckpointer() as ckptr:
    stored = ckptr.metadata(os.path.join(os.path.abspath(init_from), 'backbone'))
    stored = getattr(stored, 'item_metadata', stored)
    check_against(jax_tree_to_dict(stored), like, f'model.init_from={init_from}')
    return ckptr.restore(os.path.join(os.path.abspath(init_from), 'backbone'), like)


def jax_tree_to_dict(tree) -> dict:
  """Nested dicts of orbax metadata (anything with .shape) as plain dicts."""
  return {
    k: jax_tree_to_dict(v) if isinstance(v, dict) or hasattr(v, 'items') else v
    for k, v in tree.items()
  }


def with_pretrained_backbone(variables: dict, init_from: str, arch: str) -> dict:
  """`variables` with the 'backbone' entries of each collection replaced by the imported
  weights in `init_from`; unchanged when it is ''."""
  if not init_from:
    return variables
  like = {col: tree['backbone'] for col, tree in variables.items() if 'backbone' in tree}
  loaded = load_backbone(init_from, arch, like)
  return {
    col: {**tree, 'backbone': loaded[col]} if col in loaded else tree
    for col, tree in variables.items()
  }
