"""Tiny datasets in the real on-disk formats: JPEG images, VOC palette PNG masks, grayscale
SegmentationClassAug PNGs, SBD GTcls .mat files, VOC XML annotations, saliency PNGs, list
files and class folders. Every image of a train_aug set has 4 classes, together all 20."""

import os

import numpy as np
import scipy.io
from PIL import Image

from cows_jax import visualize
from cows_jax.data import voc

H, W = 24, 32
VOC_TRAIN = ['2007_000001', '2007_000002', '2007_000003']
VOC_VAL = ['2007_000004', '2007_000005']
SBD_ONLY = ['2008_000001', '2008_000002', '2008_000003']
TEST = ['2009_000001', '2009_000002']  # the first has an XML annotation
TRAIN_AUG = sorted(VOC_TRAIN + SBD_ONLY)


def classes_of(image_id: str) -> list[int]:
  """4 classes per train_aug image, all 20 over the set; 2 for val images."""
  if image_id in TRAIN_AUG:
    k = TRAIN_AUG.index(image_id)
    return [(4 * k + j) % 20 for j in range(4)]
  return [VOC_VAL.index(image_id) + 5, 14]


def mask_of(image_id: str) -> np.ndarray:
  """Background plus one horizontal band per class, with a 255 line between bands."""
  mask = np.zeros((H, W), np.uint8)
  classes = classes_of(image_id)
  for j, c in enumerate(classes):
    top = 2 + j * (H - 4) // len(classes)
    mask[top : top + (H - 4) // len(classes), 4 : W - 4] = c + 1
    mask[top, 4 : W - 4] = 255
  return mask


def write_jpeg(path: str, seed: int, shape=(H, W)) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  rng = np.random.default_rng(seed)
  Image.fromarray(rng.integers(0, 255, (*shape, 3), dtype=np.uint8)).save(path, quality=90)


def write_palette_png(path: str, mask: np.ndarray) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image = Image.fromarray(mask, mode='P')
  image.putpalette(visualize.voc_palette().ravel().tolist())
  image.save(path)


def write_gray_png(path: str, array: np.ndarray) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array, mode='L').save(path)


def write_sbd_mat(path: str, mask: np.ndarray) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  mask = np.where(mask == 255, 0, mask).astype(np.uint8)  # SBD masks have no ignore band
  scipy.io.savemat(
    path,
    {
      'GTcls': {
        'Segmentation': mask,
        'Boundaries': np.zeros(0),
        'CategoriesPresent': np.unique(mask[mask > 0]),
      }
    },
  )


def write_xml(path: str, names: list[str]) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  objects = ''.join(f'<object><name>{n}</name><difficult>0</difficult></object>' for n in names)
  with open(path, 'w') as f:
    f.write(f'<annotation><filename>{os.path.basename(path)}</filename>{objects}</annotation>')


def write_list(path: str, lines: list[str]) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    f.write(''.join(line + '\n' for line in lines))


def make_voc(base: str, aug: str = 'seg_class_aug', saliency: bool = True) -> str:
  """base/VOCdevkit/VOC2012 (+ SegmentationClassAug or base/benchmark_RELEASE), saliency maps
  of the train_aug images in base/saliency; returns the VOC2012 directory."""
  root = os.path.join(base, 'VOCdevkit', 'VOC2012')
  for seed, i in enumerate(TRAIN_AUG + VOC_VAL + TEST):
    write_jpeg(os.path.join(root, 'JPEGImages', i + '.jpg'), seed)
  for i in TRAIN_AUG if saliency else ():
    write_gray_png(
      os.path.join(base, 'saliency', i + '.png'), np.where(mask_of(i) > 0, 220, 10).astype(np.uint8)
    )
  for i in VOC_TRAIN + VOC_VAL:
    write_palette_png(os.path.join(root, 'SegmentationClass', i + '.png'), mask_of(i))
  sets = os.path.join(root, 'ImageSets', 'Segmentation')
  write_list(os.path.join(sets, 'train.txt'), VOC_TRAIN)
  write_list(os.path.join(sets, 'val.txt'), VOC_VAL)
  write_list(os.path.join(sets, 'test.txt'), TEST)
  write_xml(os.path.join(root, 'Annotations', TEST[0] + '.xml'), ['dog', 'person', 'dog'])
  if aug == 'seg_class_aug':
    for i in TRAIN_AUG + VOC_VAL:
      write_gray_png(os.path.join(root, 'SegmentationClassAug', i + '.png'), mask_of(i))
    write_list(
      os.path.join(root, 'ImageSets', 'SegmentationAug', 'train_aug.txt'),
      [f'/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png' for i in TRAIN_AUG],
    )
  else:  # SBD: its train/val overlap VOC's, and one SBD val image is a VOC val image.
    dataset = os.path.join(base, 'benchmark_RELEASE', 'dataset')
    for i in SBD_ONLY + VOC_VAL[:1]:
      write_sbd_mat(os.path.join(dataset, 'cls', i + '.mat'), mask_of(i))
    write_list(os.path.join(dataset, 'train.txt'), SBD_ONLY[:2])
    write_list(os.path.join(dataset, 'val.txt'), SBD_ONLY[2:] + VOC_VAL[:1])
  return root


def make_class_folders(base: str, per_class: int = 1, classes=voc.CLASS_NAMES) -> str:
  """base/<class>/<k>.jpg for each class; returns base."""
  for c, name in enumerate(classes):
    for k in range(per_class):
      write_jpeg(os.path.join(base, name, f'{k}.jpg'), 1000 + 10 * c + k)
  return base
