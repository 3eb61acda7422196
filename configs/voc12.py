"""Setting 1: PASCAL VOC 2012, image-level labels only (classifier, maps, pseudo labels and
segmenter on train_aug, 10,582 images; evaluation on val, 1,449), paper hyperparameters.

    cows-jax data check --config configs/voc12.py --config.data.manual_dir=/data/VOCdevkit \
        --config.data.saliency_dir=/data/saliency_aug
    cows-jax pipeline --config configs/voc12.py --workdir runs/voc12 --config.data...

The augmented set as SegmentationClassAug PNGs (default) or the SBD release:
--config.data.voc.aug_layout=sbd --config.data.voc.aug_dir=/data/benchmark_RELEASE.
The paper starts from ImageNet weights: --config.model.init_from=DIR (README, "Pretrained
weights"); without it the backbone starts from random weights.
`configs/voc12.py:runlocal` runs the whole pipeline on a 2-core CPU in minutes. On a GPU or
TPU, `configs/voc12.py:gpu` or `:tpu` (every config takes them, also as `:runlocal,gpu`):
bfloat16 compute and input worker processes, the same math (docs/devices.md).
"""

from cows_jax.configs import presets


def get_config(arg: str | None = None):
  return presets.with_arg(presets.voc12(), arg, 'configs/voc12.py', runlocal=presets.runlocal)
