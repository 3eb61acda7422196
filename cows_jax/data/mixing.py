"""Extra images in the classifier's pair sampling (paper settings 2 and 3).

The classifier's pool is the primary split followed by the extra images. An epoch holds every
primary image once as an anchor plus `round(ratio * num_primary)` extra anchors, taken in turn
from a reshuffled cycle over the extra set, so that its length, and with it the lr schedule,
the contrastive-loss epoch and the checkpoint `localize` reads, does not depend on how many
extra images there are. Partners are any pool image sharing a class (paper: extra images
enter pair sampling like VOC images).

Robust option for noisy sources ('clean_partners'): a noisy (web) image is never drawn as a
partner; it is still an anchor, paired with a clean image of its label. Why this one: each
side's co-attention term asks for the common classes in features pooled from the *other*
image, so when a web label is wrong, the term fed by the web image's features is wrong. With a
clean partner the other term stays right, no clean anchor ever gets a term fed by web
features, and two wrong labels never meet in one pair. It is a pure function of the labels
and the flag, so the step-indexed pipeline stays exactly resumable (a filter on classifier
scores would make the data depend on the training run).
"""

import dataclasses
import functools

import numpy as np

from cows_jax.data import records
from cows_jax.data.pairs import ClassIndex

MIXINGS = ('plain', 'clean_partners')


@dataclasses.dataclass(frozen=True)
class MixPlan:
  """Which pool record each anchor slot of an epoch holds: slots below `num_primary` are the
  primary images, the other `extra_per_epoch` slots draw extra images in turn."""

  num_primary: int
  num_extra: int = 0
  extra_per_epoch: int = 0

  @property
  def epoch_length(self) -> int:
    return self.num_primary + self.extra_per_epoch

  def anchor(self, epoch: int, slot: int, seed: int) -> int:
    if slot < self.num_primary:
      return int(slot)
    draw = epoch * self.extra_per_epoch + slot - self.num_primary
    cycle, position = divmod(int(draw), self.num_extra)
    return self.num_primary + int(_cycle_order(seed, cycle, self.num_extra)[position])


def make_plan(num_primary: int, num_extra: int = 0, ratio: float = 0.0) -> MixPlan:
  """The plan of `num_primary` images mixed with `num_extra` at `ratio` (no labels needed)."""
  if ratio < 0:
    raise ValueError(f'data.extra.ratio={ratio} must be >= 0')
  return MixPlan(num_primary, num_extra, int(round(ratio * num_primary)) if num_extra else 0)


@functools.lru_cache(maxsize=4)
def _cycle_order(seed: int, cycle: int, n: int) -> np.ndarray:
  return np.random.default_rng([seed, cycle, n]).permutation(n)


class ConcatSource:
  """The primary source's records, then the extra source's."""

  def __init__(self, primary, extra):
    self._primary, self._extra = primary, extra

  def __len__(self) -> int:
    return len(self._primary) + len(self._extra)

  def __getitem__(self, index: int) -> dict:
    index = int(index)
    n = len(self._primary)
    return self._primary[index] if index < n else self._extra[index - n]

  def labels(self) -> np.ndarray:
    return np.concatenate([records.all_labels(self._primary), records.all_labels(self._extra)])


@dataclasses.dataclass(frozen=True)
class PairPool:
  """What the classifier samples pairs from."""

  source: object
  class_index: ClassIndex
  plan: MixPlan
  noisy: np.ndarray  # bool per pool record: from a source flagged is_noisy_source


def make_pool(
  primary, extra=None, ratio: float = 0.0, is_noisy_source: bool = False, mixing: str = 'plain'
) -> PairPool:
  """The pool of `primary` alone, or mixed with `extra` as configured in data.extra."""
  if extra is None:
    return PairPool(
      primary,
      ClassIndex(records.all_labels(primary)),
      MixPlan(len(primary)),
      np.zeros(len(primary), bool),
    )
  if mixing not in MIXINGS:
    raise ValueError(f'data.extra.mixing={mixing!r}; expected one of {MIXINGS}')
  if mixing == 'clean_partners' and not is_noisy_source:
    raise ValueError(
      "data.extra.mixing='clean_partners' acts on noisy sources only; set "
      'data.extra.is_noisy_source=True or data.extra.mixing=plain'
    )
  source = ConcatSource(primary, extra)
  noisy = np.zeros(len(source), bool)
  noisy[len(primary) :] = is_noisy_source
  partners = ~noisy if mixing == 'clean_partners' else None
  return PairPool(
    source, ClassIndex(source.labels(), partners), make_plan(len(primary), len(extra), ratio), noisy
  )
