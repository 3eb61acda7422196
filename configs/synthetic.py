"""The built-in synthetic dataset, sized for a 2-core CPU: `make demo` runs this file.

The paper's recipe (defaults.py) from a pretrained VGG16, as the paper starts from an
ImageNet-trained one: `cows-jax pretrain` makes the backbone on the synthetic ImageNet
stand-in (docs/pretrain.md), and the one of this config ships with the package. Only size,
width and the number of epochs / iterations are scaled, each listed below under "scaled";
everything else (no BatchNorm, lr 1e-3 with multipliers 1/2/10/20, batch 5 pairs, the
self-pairs, the colour jitter, the segmenter's batch, schedule and test procedure) is the
paper's. `:scratch` is the former demo: a BatchNorm VGG trained from scratch.
"""

from cows_jax.configs import presets
from cows_jax.configs.defaults import paper_defaults


def get_config(arg: str | None = None):
  c = paper_defaults()
  c.data.name = 'synthetic'
  c.data.image_size = 96
  c.data.train_size = 2000
  c.data.val_size = 300
  # 'shapes': data/synthetic.py; 'parts' (`:parts`): data/synthetic_parts.py.
  c.data.world = 'shapes'
  # Both networks start from the config's ImageNet stand-in backbone (imagenet_standin/).
  c.model.init_from = c.segment.init_from = 'standin'
  c.segment.backbone = 'vgg16'  # the paper's VGG16 setting.

  # ---- scaled: size and width.
  c.input.size = 64  # 256 in the paper (the 96 px images are resized, as VOC's are).
  c.model.width = 0.125  # channels x1/8 (the feature dim and segmenter head alike).
  c.segment.crop_size = 96  # 321 in the paper: the whole image.
  # The head's dilation scales with the crop: 12 on a 41-position map (321 px), 4 on 12.
  c.segment.head_dilation = 4
  # Images of 128 px or less leave a 401 px window nothing to slide over: each runs whole.
  c.inference.window = 0
  # Three scales instead of five (x flip): measured on a busy 2-core CPU, the paper's five
  # cost 185 ms per image and segmenter, the dense CRF 81 ms.
  c.inference.scales = (0.75, 1.0, 1.25)

  # ---- scaled: epochs and iterations (the paper: 15 epochs, lr x0.1 at 5 and 10, maps after
  # 11, contrastive losses from epoch index 2; 16,000 segmenter iterations, ~15 epochs).
  c.classify.epochs = 4
  c.classify.lr_decay_epochs = (2, 3)
  c.localize.after_epochs = 3
  c.classify.contrastive_from_epoch = 1
  c.segment.iterations = 750  # x10 images per iteration: 3.75 epochs of the 2,000 images.
  c.segment.log_every_steps = 50

  # ---- `cows-jax pretrain` (docs/pretrain.md): the ImageNet stand-in's backbone, sized for
  # a few minutes on a 2-core CPU. The stages use it only where model.init_from /
  # segment.init_from name its directory.
  c.pretrain.image_size = 64  # = input.size
  c.pretrain.train_size, c.pretrain.val_size = 14400, 1440  # 100 and 10 per class
  c.pretrain.epochs = 12
  c.pretrain.batch_size = 64
  c.pretrain.base_lr = 0.1
  c.pretrain.warmup_epochs = 0.25
  c.pretrain.log_every_steps = 50

  return presets.with_arg(
    c,
    arg,
    'configs/synthetic.py',
    parts=parts,
    tiny=tiny,
    tiny_pretrained=tiny_pretrained,
    scratch=scratch,
    setting2=setting2,
    setting3=setting3,
  )


def scratch(c):
  """The former demo: a BatchNorm VGG trained from scratch with the CPU settings of
  `presets.cpu_from_scratch` (no self-pairs, multipliers 1/2, larger learning rates), 6 epochs."""
  presets.cpu_from_scratch(c)
  c.model.init_from = c.segment.init_from = ''
  c.classify.epochs, c.classify.lr_decay_epochs, c.localize.after_epochs = 6, (4, 5), 6
  # The synthetic classes differ partly by hue: a +-0.1 turn hue jitter moves one class into
  # another's hue range.
  c.input.color_jitter = (0.3, 0.3, 0.3, 0.0)


def parts(c):
  """The parts world (data/synthetic_parts.py, docs/data.md): 3 families of 3 classes that
  share a body and differ by a small part, so that a single image's CAM is partial. The
  world that passed the gate (docs/ablation.md, attempt 18): 224 px images (28 x 28 maps),
  bodies twice as long as wide with the part standing out of one end, an unlabelled body in
  every image, 800 train images; its own pretrained backbone (shipped), on objects a quarter
  the world's size. Other arguments go after it: `synthetic:parts,tiny`."""
  c.data.world = 'parts'
  c.data.num_classes = 9
  c.data.image_size = 224
  c.data.train_size, c.data.val_size = 800, 200
  c.data.unlabelled_rate = 1.0  # bodies without their part: the body alone names no class.
  c.data.body_aspect = 2.0  # most of the body beyond the part's halo (about 6 cells).
  c.data.part_offset = 0.5  # the part stands out of the body's end, as a head does.
  c.input.size = 224  # the images as they are: 28 x 28 maps at stride 8.
  c.segment.crop_size = 224
  c.segment.head_dilation = 8  # the paper's 12 on 41 positions, scaled to 28.
  # ~0.4 classifier steps a second on a 2-core CPU at 224 px: 6 epochs of 160 steps (at 3
  # the CAM still covers the body: attempt 9).
  c.classify.epochs, c.classify.lr_decay_epochs, c.localize.after_epochs = 6, (4,), 6
  c.segment.iterations = 320  # x10 images per iteration: 4 epochs of the 800 images.
  c.pretrain.num_classes = 27  # every body with every part (synthetic_parts.pretrain_classes).
  # Objects a quarter of the world's (their reach shorter than the world's objects: attempt 9).
  c.pretrain.image_size = 56
  c.pretrain.train_size, c.pretrain.val_size = 2700, 270  # 100 and 10 per class.
  c.pretrain.epochs = 40  # 3360 steps of 32 images: about 8 minutes on a 2-core CPU.
  c.pretrain.batch_size = 32
  c.pretrain.train_eval_size = 540


def tiny(c):
  """The end-to-end tests: minutes become seconds, from scratch (a test needs no backbone)."""
  scratch(c)
  tiny_pretrained(c)


def tiny_pretrained(c):
  """The paper's recipe at the tiny size, from the tiny pretrained backbone (shipped)."""
  c.data.train_size, c.data.val_size, c.data.image_size = 32, 8, 48
  c.input.size, c.segment.crop_size = 48, 48
  c.classify.epochs, c.classify.lr_decay_epochs, c.localize.after_epochs = 2, (1,), 2
  c.classify.log_every_steps = 2
  c.segment.iterations, c.segment.log_every_steps = 6, 2
  c.inference.scales = (0.75, 1.0)
  p = c.pretrain
  p.num_classes, p.image_size, p.train_size, p.val_size = 12, 32, 48, 12
  p.epochs, p.batch_size, p.warmup_epochs = 1, 8, 0.5
  p.log_every_steps, p.eval_batch_size, p.train_eval_size = 2, 16, 16


def setting2(c):
  """Paper setting 2: + simple single-label images in the classifier's pairs (the synthetic
  dataset's `single_label` split: one object per image, plainer backgrounds), as
  configs/voc12_single_label.py adds Caltech-256 images to VOC."""
  c.data.extra.layout, c.data.extra.split = 'split', 'single_label'
  c.data.extra.is_noisy_source = False
  # Extra anchors per epoch per train image: at the demo's sizes (2,000 train, 500 extra
  # images) each extra image once per epoch; settings 2 and 3 add the same number of anchors.
  c.data.extra.ratio = 0.25
  c.data.extra.mixing = 'plain'


def setting3(c):
  """Paper setting 3: + noisy web images in the classifier's pairs (the `web` split: images
  drawn like train, a data.web_noise_rate fraction of them with a wrong label set), as
  configs/voc12_web.py adds web search results to VOC."""
  c.data.extra.layout, c.data.extra.split = 'split', 'web'
  c.data.extra.is_noisy_source = True
  c.data.extra.ratio = 0.25  # as setting 2
  c.data.extra.mixing = 'plain'  # the paper's; 'clean_partners' is the robust option
