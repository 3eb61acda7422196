"""Shared fixtures: tiny configs that run the real code in seconds."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'configs'))


@pytest.fixture
def tiny_config(tmp_path):
  """configs/synthetic.py:tiny with the dataset built under tmp_path."""
  import synthetic  # configs/synthetic.py
  cfg = synthetic.get_config('tiny')
  cfg.data.data_dir = str(tmp_path / 'data')
  return cfg
