"""Reports of issue 5: `cows-jax summary` (parameters and FLOPs per stage) and the
confusion-matrix picture."""

import numpy as np
import pytest

from cows_jax import visualize
from cows_jax.configs.defaults import paper_defaults
from cows_jax.tools import model_summary


def test_summary_of_the_paper_segmenter_and_a_tiny_run(tiny_config):
  cfg = paper_defaults()
  cfg.data.num_classes = 20
  text = model_summary.segmenter(cfg, depth=1)
  assert 'resnet101-largefov, 21 classes' in text
  assert 'parameters: 62.34 M trained' in text  # torchvision's 42.5 M + the LargeFOV head.
  text = model_summary.run(tiny_config, depth=1)
  assert 'stage 1 classify' in text and 'stage 3 segment (vgg16-largefov' in text
  assert text.count('GFLOPs per image') == 2


def test_summary_tables_count_each_modules_parameters():
  """clu.parameter_overview's tables: modules at a depth sum to the tensors they hold."""
  params = {
    'backbone': {'conv1': {'kernel': np.zeros((3, 3, 3, 8)), 'bias': np.zeros(8)}},
    'head': {'kernel': np.zeros((8, 2))},
  }
  modules = model_summary.table(params, depth=1)
  assert (
    '| backbone | 224        | 93.3% |' in modules
    and '| head     | 16         | 6.7%  |' in modules
  )
  tensors = model_summary.table(params, depth=0)
  assert 'backbone/conv1/kernel | (3, 3, 3, 8)' in tensors and 'Total: 240' in tensors


def test_confusion_matrix_image():
  names = ['background', 'cat', 'dog']
  cm = np.array([[50, 0, 0, 5], [10, 30, 0, 0], [0, 0, 0, 0]])
  image = visualize.confusion_matrix_image(cm, names, 'segmentation (val)')
  assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
  with pytest.raises(ValueError, match='matrix must be'):
    visualize.confusion_matrix_image(cm[:2], names)
