"""`cows-jax bench` runs end to end at a tiny size and prints one row per procedure and the
ratios against ours."""

import re

from cows_jax.tools import bench


def test_train_step_bench_prints_rows_and_ratios(capsys):
  assert (
    bench.main(
      [
        'train-step',
        '--views',
        'full',
        '--batch',
        '1',
        '--size',
        '32',
        '--width',
        '0.125',
        '--classes',
        '4',
        '--steps',
        '1',
      ]
    )
    == 0
  )
  out = capsys.readouterr().out
  assert re.search(r'jax, anchor features reused\s+\d+\.\d{3} s/step', out), out
  assert re.search(r'jax, pair forward each\s+\d+\.\d{3} s/step', out), out
  assert re.search(r'jax, pair forward each / ours: \d+\.\d\dx', out), out
