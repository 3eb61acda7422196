"""The built-in synthetic dataset, sized for a 2-core CPU: `make demo` runs this file.

Starts from the paper defaults (defaults.py) and shrinks what a CPU cannot afford:
backbone width, input size, epochs (with the lr decay epochs scaled alike) and segmenter
iterations. Trained from scratch (no ImageNet weights exist for a width-scaled VGG), hence the
larger base learning rates. Every change against the paper is listed here or in
`presets.cpu_from_scratch`.
"""

from cows_jax.configs import presets
from cows_jax.configs.defaults import paper_defaults


def get_config(arg: str | None = None):
  c = paper_defaults()
  c.data.name = 'synthetic'
  c.data.image_size = 96
  c.data.train_size = 2000
  c.data.val_size = 300

  presets.cpu_from_scratch(c)
  c.classify.epochs = 6
  c.classify.lr_decay_epochs = (4, 5)
  c.classify.localize_after_epochs = 6
  # The synthetic classes differ partly by hue: a +-0.1 turn hue jitter moves one class into
  # another's hue range (on VOC it does not change what the object is).
  c.input.color_jitter = (0.3, 0.3, 0.3, 0.0)

  c.segment.iterations = 750
  # Three scales instead of five (x flip): measured on a busy 2-core CPU, the paper's five
  # cost 185 ms per image and segmenter, the dense CRF 81 ms.
  c.inference.scales = (0.75, 1.0, 1.25)

  return presets.with_arg(c, arg, 'configs/synthetic.py', tiny=tiny)


def tiny(c):
  """The end-to-end test: minutes become seconds."""
  c.data.train_size, c.data.val_size, c.data.image_size = 32, 8, 48
  c.input.size, c.segment.crop_size = 48, 48
  c.classify.epochs, c.classify.lr_decay_epochs, c.classify.localize_after_epochs = 2, (1,), 2
  c.classify.log_every_steps = 2
  c.segment.iterations, c.segment.log_every_steps = 6, 2
  c.inference.scales = (0.75, 1.0)
