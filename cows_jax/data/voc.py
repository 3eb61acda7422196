"""PASCAL VOC 2012 with the augmented training set, from the user's copy (no downloads).

Expected under `manual_dir` (itself, VOC2012/ or VOCdevkit/VOC2012/):
  JPEGImages/<id>.jpg, SegmentationClass/<id>.png (palette), Annotations/<id>.xml,
  ImageSets/Segmentation/{train,val}.txt and, with the test images, test.txt.
The augmented set in one of two layouts (`aug_layout`):
  'seg_class_aug': SegmentationClassAug/<id>.png (class ids) in `aug_dir` (default
      VOC2012/SegmentationClassAug) and a train_aug list (default
      VOC2012/ImageSets/SegmentationAug/train_aug.txt);
  'sbd': the SBD release, `aug_dir` = benchmark_RELEASE or benchmark_RELEASE/dataset
      (cls/<id>.mat, train.txt, val.txt); train_aug = SBD train + SBD val + VOC train - VOC
      val, masks from VOC where it has one, else from SBD;
  'none': no train_aug split.
Splits: train_aug, train, val (image-level labels from the masks), test (no masks; labels
from the XML annotations where present). Saliency maps `<saliency_dir>/<id>.png` join by id.
"""

import dataclasses
import os
import xml.etree.ElementTree as ET

from cows_jax.data import records

CLASS_NAMES = (
  'aeroplane',
  'bicycle',
  'bird',
  'boat',
  'bottle',
  'bus',
  'car',
  'cat',
  'chair',
  'cow',
  'diningtable',
  'dog',
  'horse',
  'motorbike',
  'person',
  'pottedplant',
  'sheep',
  'sofa',
  'train',
  'tvmonitor',
)
AUG_LAYOUTS = ('seg_class_aug', 'sbd', 'none')


def find_root(manual_dir: str) -> str:
  """The VOC2012 directory at or under `manual_dir`."""
  if not manual_dir:
    raise ValueError(
      'data.manual_dir is not set: give the directory holding your copy of '
      'VOCdevkit/VOC2012 with --config.data.manual_dir=DIR'
    )
  for root in (
    manual_dir,
    os.path.join(manual_dir, 'VOC2012'),
    os.path.join(manual_dir, 'VOCdevkit', 'VOC2012'),
  ):
    if os.path.isdir(os.path.join(root, 'JPEGImages')):
      return root
  raise FileNotFoundError(
    f'data.manual_dir={manual_dir}: no VOC 2012 layout found (expected '
    'JPEGImages/ in it, in VOC2012/ or in VOCdevkit/VOC2012/)'
  )


def xml_classes(path: str) -> tuple[int, ...]:
  """Class ids of the objects named in a VOC annotation."""
  try:
    names = [o.findtext('name', '').strip() for o in ET.parse(path).getroot().iter('object')]
  except ET.ParseError as e:
    raise ValueError(f'annotation {path} is not valid XML ({e})') from None
  unknown = sorted(set(names) - set(CLASS_NAMES))
  if unknown:
    raise ValueError(f'annotation {path} names classes {unknown} that are not VOC classes')
  return tuple(sorted({CLASS_NAMES.index(n) for n in names}))


def sbd_root(aug_dir: str) -> str:
  for root in (aug_dir, os.path.join(aug_dir, 'dataset')):
    if os.path.isdir(os.path.join(root, 'cls')):
      return root
  raise FileNotFoundError(
    f'SBD directory {aug_dir} not found or without cls/ (expected '
    'benchmark_RELEASE or benchmark_RELEASE/dataset)'
  )


@dataclasses.dataclass(frozen=True)
class VocLayout:
  """Where the user's VOC copy lives and which augmented-set layout it has."""

  manual_dir: str
  aug_layout: str = 'seg_class_aug'
  aug_dir: str = ''
  train_aug_list: str = ''
  saliency_dir: str = ''
  num_classes = len(CLASS_NAMES)

  def __post_init__(self):
    if self.aug_layout not in AUG_LAYOUTS:
      raise ValueError(f'data.voc.aug_layout={self.aug_layout!r}; expected one of {AUG_LAYOUTS}')

  def entries(self) -> dict[str, list[records.Entry]]:
    root = find_root(self.manual_dir)
    if self.saliency_dir:
      records.require_dir(self.saliency_dir, 'saliency directory (data.saliency_dir)')
    sets = os.path.join(root, 'ImageSets', 'Segmentation')
    out = {}
    for split in ('train', 'val'):
      listed = os.path.join(sets, split + '.txt')
      out[split] = [
        self._entry(root, i, listed, mask=_voc_mask(root, i)) for i in records.read_ids(listed)
      ]
    if self.aug_layout != 'none':
      out['train_aug'] = self._train_aug(
        root, {e.id for e in out['train']}, {e.id for e in out['val']}
      )
    listed = os.path.join(sets, 'test.txt')
    if os.path.isfile(listed):
      out['test'] = [
        self._entry(root, i, listed, labels=_test_labels(root, i)) for i in records.read_ids(listed)
      ]
    return out

  def _entry(self, root: str, image_id: str, origin: str, **fields) -> records.Entry:
    saliency = os.path.join(self.saliency_dir, image_id + '.png') if self.saliency_dir else ''
    return records.Entry(
      id=image_id,
      image=os.path.join(root, 'JPEGImages', image_id + '.jpg'),
      origin=origin,
      saliency=saliency,
      **fields,
    )

  def _train_aug(self, root: str, voc_train: set, voc_val: set) -> list[records.Entry]:
    if self.aug_layout == 'seg_class_aug':
      aug_dir = records.require_dir(
        self.aug_dir or os.path.join(root, 'SegmentationClassAug'),
        'SegmentationClassAug directory (data.voc.aug_dir)',
      )
      listed = self.train_aug_list or os.path.join(
        root, 'ImageSets', 'SegmentationAug', 'train_aug.txt'
      )
      return [
        self._entry(root, i, listed, mask=os.path.join(aug_dir, i + '.png'))
        for i in records.read_ids(listed)
      ]
    sbd = sbd_root(self.aug_dir or os.path.join(self.manual_dir, 'benchmark_RELEASE'))
    sbd_ids = set(records.read_ids(os.path.join(sbd, 'train.txt'))) | set(
      records.read_ids(os.path.join(sbd, 'val.txt'))
    )
    origin = f'train_aug = SBD train + SBD val ({sbd}) + VOC train - VOC val'
    return [
      self._entry(
        root,
        i,
        origin,
        mask=_voc_mask(root, i) if i in voc_train else os.path.join(sbd, 'cls', i + '.mat'),
      )
      for i in sorted((sbd_ids | voc_train) - voc_val)
    ]


def _voc_mask(root: str, image_id: str) -> str:
  return os.path.join(root, 'SegmentationClass', image_id + '.png')


def _test_labels(root: str, image_id: str) -> tuple[int, ...]:
  path = os.path.join(root, 'Annotations', image_id + '.xml')
  return xml_classes(path) if os.path.isfile(path) else ()


class CowsVoc(records.RecordsBuilder):
  """VOC 2012 (+ augmented set) records; one build per layout fingerprint."""


def load(layout: VocLayout, data_dir: str, max_skipped_fraction: float) -> dict:
  """{split: records.RecordSource}, building first if needed."""
  return records.load(CowsVoc, layout, data_dir, max_skipped_fraction)
