"""Setting 4: the LID 2020 WSSS track, ILSVRC DET, 200 classes, in the list-file layout.

    class list   one class per line, first token its key (wnid), e.g. `n02672831 accordion`
    train list   `relative/path[.jpg] c1 c2 ...` (class ids 0..199 or keys), ~456k lines
    val list     `relative/path[.jpg]`; classes from the masks MASK_DIR/relative/path.png
                 (0 background, k+1 class k, 255 ignore)

    cows-jax pipeline --config configs/lid20.py --workdir runs/lid20 \
        --config.data.lists.class_list=/data/lid/classes.txt \
        --config.data.lists.image_root=/data/lid/images \
        --config.data.lists.train=/data/lid/train_cls.txt \
        --config.data.lists.val=/data/lid/val.txt --config.data.lists.mask_dir=/data/lid/masks \
        --config.data.saliency_dir=/data/lid/saliency

Hyperparameters are the paper's VOC ones; with ~456k images, 15 epochs are many steps.
"""

from cows_jax.configs import presets
from cows_jax.configs.defaults import paper_defaults


def get_config(arg: str | None = None):
  c = paper_defaults()
  c.data.name = 'image_lists'
  c.data.num_classes = 200
  c.data.image_size = 0  # original image sizes
  c.data.classify_split = 'train'
  c.data.train_split = 'train'
  c.data.eval_split = 'val'
  c.data.lists.masked_splits = ('val',)
  return presets.with_arg(c, arg, 'configs/lid20.py', runlocal=presets.runlocal)
