"""Setting 2: VOC 2012 (setting 1) + extra simple single-label images, e.g. Caltech-256
images of the 20 VOC classes, in one folder per VOC class name (ROOT/dog/*.jpg, ...).

    cows-jax pipeline --config configs/voc12_single_label.py --workdir runs/voc12_sl \
        --config.data.manual_dir=/data/VOCdevkit --config.data.saliency_dir=/data/sal \
        --config.data.extra.root=/data/caltech_voc

Extra images join only the classifier's pair sampling (anchors and partners); maps, pseudo
labels and the segmenter stay on VOC train_aug. A list file instead of folders:
--config.data.extra.layout=list --config.data.extra.list_file=FILE (root = image root).
"""

from cows_jax.configs import presets


def get_config(arg: str | None = None):
  c = presets.voc12()
  c.data.extra.layout = 'folders'
  c.data.extra.is_noisy_source = False
  # Extra anchors per epoch per VOC image; (extra images / 10,582) uses each extra image
  # once per epoch, as a plain concatenation of the two sets would.
  c.data.extra.ratio = 0.25
  c.data.extra.mixing = 'plain'
  return presets.with_arg(c, arg, 'configs/voc12_single_label.py', runlocal=presets.runlocal)
