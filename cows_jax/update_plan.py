"""How one optimizer update's examples fill the devices: the trainers' plan, logged at start.

An update averages the gradient of `batch x accumulation` examples (the segmenter's paper
recipe: 1 crop x 10 accumulation steps). Run as written on D devices, each micro-step of
`batch` examples is padded to a multiple of D, so most device slots hold padding (1 real of 8
on 8 devices). Folded, the update's examples are cut into micro-steps of `slots` examples
(`batch` rounded up to a multiple of D: no device holds more than the recipe's batch gives
it), in their order, and only the last micro-step of an update is padded. The gradient
average per update is the same when each micro-step's loss is its examples' loss sum over
`examples / micro_steps` (`normalizer`): the accumulating optimizer's mean over the
micro-steps is then the mean over the update's examples.

What folding changes: BatchNorm batch statistics (where the model trains them) are taken over
a micro-step's real examples, `slots` of them instead of `batch`, and its running averages
move once per micro-step. The segmenter of the paper (frozen BatchNorm, or none) has no such
statistics; a from-scratch BatchNorm backbone does.
"""

import dataclasses

from absl import logging

LOW_REAL_FRACTION = 0.5  # under it, the plan's log line warns and names the fields to change.


@dataclasses.dataclass(frozen=True)
class UpdatePlan:
  """`examples` per update, in `micro_steps` micro-steps of up to `micro_batch` of them, each
  padded to `slots` device slots."""

  examples: int
  micro_steps: int
  micro_batch: int
  slots: int
  devices: int

  @property
  def real_fraction(self) -> float:
    """The share of device slots that hold real examples (the rest is zero-weight padding)."""
    return self.examples / (self.micro_steps * self.slots)

  @property
  def normalizer(self) -> float:
    """A micro-step's loss is the sum of its examples' losses over this: the mean over the
    update's examples once the optimizer averages the micro-steps."""
    return self.examples / self.micro_steps

  def real_per_micro_step(self) -> list[int]:
    size = self.micro_batch
    return [min(size, self.examples - m * size) for m in range(self.micro_steps)]


def plan(batch: int, accumulation: int, devices: int, fold: bool) -> UpdatePlan:
  """The plan of an update of `batch` x `accumulation` examples on `devices` devices: as
  written (`batch` per micro-step, `accumulation` micro-steps), or folded."""
  slots = -(-batch // devices) * devices
  examples = batch * accumulation
  if fold:
    return UpdatePlan(examples, -(-examples // slots), slots, slots, devices)
  return UpdatePlan(examples, accumulation, batch, slots, devices)


def log(stage: str, p: UpdatePlan, fields: dict[str, str]) -> None:
  """One line that begins with the stage's name; under LOW_REAL_FRACTION, a warning naming
  the config fields that would fill the devices (`fields`: name -> what changing it does)."""
  real = p.real_per_micro_step()
  per_device = ' + '.join(str(r) for r in real) if len(set(real)) > 1 else f'{real[0]} each'
  logging.info(
    '%s: %d examples per update, %d micro-steps per update of %d slots on %d devices (real '
    'examples per micro-step: %s, %.2g per device), device slots real: %d%%',
    stage,
    p.examples,
    p.micro_steps,
    p.slots,
    p.devices,
    per_device,
    p.examples / p.micro_steps / p.devices,
    round(100 * p.real_fraction),
  )
  if p.real_fraction < LOW_REAL_FRACTION:
    advice = '; '.join(f'{name}: {effect}' for name, effect in fields.items())
    logging.warning(
      '%s: only %d%% of the device slots hold real examples; to fill the %d devices: %s',
      stage,
      round(100 * p.real_fraction),
      p.devices,
      advice,
    )
