"""Setting 3: VOC 2012 (setting 1) + noisy web images, one folder per VOC class name holding
that class's search results (ROOT/dog/*.jpg, ...); their labels are not fully trusted.

    cows-jax pipeline --config configs/voc12_web.py --workdir runs/voc12_web \
        --config.data.manual_dir=/data/VOCdevkit --config.data.saliency_dir=/data/sal \
        --config.data.extra.root=/data/web_voc

Mixing is the paper's (plain: web images pair like VOC images). The robust option,
--config.data.extra.mixing=clean_partners, never draws a web image as a partner
(cows_jax/data/mixing.py says why).
"""

from cows_jax.configs import presets


def get_config(arg: str | None = None):
  c = presets.voc12()
  c.data.extra.layout = 'folders'
  c.data.extra.is_noisy_source = True
  c.data.extra.ratio = 0.5  # extra anchors per epoch per VOC image.
  c.data.extra.mixing = 'plain'
  return presets.with_arg(c, arg, 'configs/voc12_web.py', runlocal=presets.runlocal)
