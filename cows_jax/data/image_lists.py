"""Datasets described by list files or by one folder per class, for any class list.

List file (the reference code's train_cls.txt format), one image per line:
    relative/path[.jpg] c1 c2 ...
the path relative to the image root ('.jpg' added when it has no extension), each class an
integer id (0-based) or a class name. Folder per class: `root/<class name>/*.jpg`, one class
per image. Class list: one class per line, its first token the name used in lists and folder
names (an ILSVRC wnid such as n02672831, or a VOC name); the rest of the line is free text.
Masks and saliency maps mirror the image paths: `<dir>/<relative path without extension>.png`.
Ids are the image paths without extension, '/' written as '__' (they name output files).
"""

import dataclasses
import os

from cows_jax.data import records

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')


def read_class_list(path: str) -> tuple[str, ...]:
  if not os.path.isfile(path):
    raise FileNotFoundError(f'class list {path} not found')
  with open(path) as f:
    names = tuple(line.split()[0] for line in f if line.strip())
  if not names or len(set(names)) != len(names):
    raise ValueError(f'class list {path} is empty or names a class twice')
  return names


def image_id(relative: str) -> str:
  return os.path.splitext(relative)[0].replace('/', '__')


def class_id(token: str, class_names: tuple[str, ...], where: str) -> int:
  """A list file's class token (an id or a name) as a class id."""
  if token.lstrip('-').isdigit():
    if not 0 <= int(token) < len(class_names):
      raise ValueError(f'{where}: class id {token} outside 0..{len(class_names) - 1}')
    return int(token)
  if token not in class_names:
    raise ValueError(
      f'{where}: class name {token!r} is not in the class list '
      f'({", ".join(class_names[:10])}{", ..." if len(class_names) > 10 else ""})'
    )
  return class_names.index(token)


def _unique(entries: list[records.Entry]) -> list[records.Entry]:
  seen = {}
  for e in entries:
    if e.id in seen:
      raise ValueError(f'{e.origin}: image id {e.id!r} already listed at {seen[e.id]}')
    seen[e.id] = e.origin
  return entries


def parse_list(
  path: str,
  image_root: str,
  class_names: tuple[str, ...],
  mask_dir: str = '',
  saliency_dir: str = '',
) -> list[records.Entry]:
  """Entries of a list file. Lines without classes take them from the mask when there is a
  mask directory; otherwise they have an empty label set (skipped by the build)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'list file {path} not found')
  entries = []
  with open(path) as f:
    for lineno, line in enumerate(f, 1):
      tokens = line.split()
      if not tokens:
        continue
      where = f'{path}:{lineno}'
      relative = tokens[0].lstrip('/')
      if not os.path.splitext(relative)[1]:
        relative += '.jpg'
      labels = tuple(sorted({class_id(t, class_names, where) for t in tokens[1:]}))
      stem = os.path.splitext(relative)[0]
      entries.append(
        records.Entry(
          id=image_id(relative),
          image=os.path.join(image_root, relative),
          origin=where,
          mask=os.path.join(mask_dir, stem + '.png') if mask_dir else '',
          labels=labels if labels or not mask_dir else None,
          saliency=os.path.join(saliency_dir, stem + '.png') if saliency_dir else '',
        )
      )
  return _unique(entries)


def parse_folders(root: str, class_names: tuple[str, ...]) -> list[records.Entry]:
  """Entries of `root/<class name>/<image>`, each labelled with its folder's class."""
  records.require_dir(root, 'image folder root')
  entries = []
  for name in sorted(os.listdir(root)):
    folder = os.path.join(root, name)
    if not os.path.isdir(folder):
      continue
    if name not in class_names:
      raise ValueError(
        f'{folder}: folder name {name!r} is not a class name (classes: {", ".join(class_names)})'
      )
    for file in sorted(os.listdir(folder)):
      if os.path.splitext(file)[1].lower() in IMAGE_EXTENSIONS:
        entries.append(
          records.Entry(
            id=image_id(os.path.join(name, file)),
            image=os.path.join(folder, file),
            origin=folder,
            labels=(class_names.index(name),),
          )
        )
  if not entries:
    raise ValueError(f'{root}: no images in class folders ({", ".join(IMAGE_EXTENSIONS)})')
  return entries


@dataclasses.dataclass(frozen=True)
class ListLayout:
  """Splits given by list files; masks joined by id for the splits in `masked_splits`."""

  class_names: tuple[str, ...]
  image_root: str
  lists: tuple[tuple[str, str], ...]  # (split, list file)
  mask_dir: str = ''
  masked_splits: tuple[str, ...] = ()
  saliency_dir: str = ''

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def entries(self) -> dict[str, list[records.Entry]]:
    records.require_dir(self.image_root, 'image root')
    for path, what in (
      (self.mask_dir, 'mask directory'),
      (self.saliency_dir, 'saliency directory'),
    ):
      if path:
        records.require_dir(path, what)
    return {
      split: parse_list(
        path,
        self.image_root,
        self.class_names,
        self.mask_dir if split in self.masked_splits else '',
        self.saliency_dir,
      )
      for split, path in self.lists
    }


@dataclasses.dataclass(frozen=True)
class FolderLayout:
  """One 'train' split from a folder per class."""

  class_names: tuple[str, ...]
  root: str

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def entries(self) -> dict[str, list[records.Entry]]:
    return {'train': parse_folders(self.root, self.class_names)}


class CowsImageList(records.RecordsBuilder):
  """Records of a list-file or folder-per-class layout; one build per layout fingerprint."""


def load(layout: ListLayout | FolderLayout, data_dir: str, max_skipped_fraction: float) -> dict:
  """{split: records.RecordSource}, building first if needed."""
  return records.load(CowsImageList, layout, data_dir, max_skipped_fraction)
