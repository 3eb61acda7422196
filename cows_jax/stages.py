"""The stages in their order, each `fn(cfg, workdir)`, and `run_stage`: what `cows-jax STAGE`,
`cows-jax pipeline`, ablate and `bench device` run."""

import time

from absl import logging

from cows_jax import classify, evaluate, label, localize, segment

STAGES = {
  'classify': classify.train,
  'localize': localize.run,
  'label': label.run,
  'segment': segment.train,
  'evaluate': evaluate.run,
}


def run_stage(stage: str, cfg, workdir: str) -> None:
  """One stage, or every stage for 'pipeline'."""
  names = list(STAGES) if stage == 'pipeline' else [stage]
  for name in names:
    logging.info('=== %s ===', name)
    start = time.time()
    STAGES[name](cfg, workdir)
    logging.info('=== %s: %.1f s ===', name, time.time() - start)
