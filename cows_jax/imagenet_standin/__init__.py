"""The synthetic world's ImageNet stand-in: its dataset, its backbones and their training.

The paper starts both networks from an ImageNet-trained VGG16, but no ImageNet weights exist
for the width-scaled VGG the synthetic configs train, so the synthetic world trains its own
stand-in on a synthetic classification set (docs/pretrain.md). Loading imported ImageNet
weights, the directories `cows-jax weights import` writes, is another matter:
models/imported.py.

  dataset.py    the stand-in's pretraining set: shape x appearance classes, the
                segmentation classes among them (the parts world's is data/synthetic_parts.py)
  backbones.py  what identifies a backbone (its fingerprint), where it lives, and the
                config value that names it (`model.init_from='standin'`)
  train.py      `cows-jax pretrain`: trains the backbone of a config, then folds its BatchNorm
  shipped/      the backbones of the packaged configs, one directory per fingerprint
"""
