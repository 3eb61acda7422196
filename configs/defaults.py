"""The reference hyperparameters of the paper, and every other config field, declared once.

Every number in the paper lives here under a name; the other configs start from
`paper_defaults()` and override what their setting changes. Code never hard-codes them. Each
field is declared with its default, its one-line meaning and its allowed values
(configs/schema.py): validation.py checks the choices and ranges from here, and
`cows-jax config --help-fields` and docs/configs.md ("All fields") are rendered from here
(`python -m cows_jax.configs.defaults --write-docs` rewrites the docs' section).
"""

import sys

import ml_collections

from cows_jax.configs.schema import Schema, Section, field, renamed
from cows_jax.models.imported import IMAGENET_MEAN, IMAGENET_STD

DTYPES = ('float32', 'bfloat16', 'float16')


def _declare() -> Section:
  c = Section()
  c.seed = field(0, 'seed of the classifier and segmenter initialization and data order')
  # Not a hyperparameter: the outputs are the same, byte for byte (host_pool.py).
  c.host_workers = field(
    0,
    'worker processes of the dense CRF and threads that encode and write the files of '
    'localize, label, evaluate, predict-split and predict (0 = every core; 1 = serial)',
    low=0,
  )

  c.data = Section('The dataset, its splits and the extra classifier images (data/).')
  c.data.name = field('synthetic', 'the dataset', choices=('synthetic', 'voc12', 'image_lists'))
  c.data.world = field(
    'shapes',
    'synthetic: the world (shapes: data/synthetic.py, parts: data/synthetic_parts.py)',
    choices=('shapes', 'parts'),
  )
  c.data.data_dir = field('', "where built datasets live ('' -> $COWS_DATA_DIR or ~/.cache)")
  c.data.num_classes = field(10, 'object classes, background excluded', low=1, high=254)
  c.data.image_size = field(
    96,
    'synthetic: the generated size; real datasets: square size records are resized to when '
    'read (0 = original sizes)',
    low=0,
  )
  c.data.train_size = field(2000, 'synthetic: images of the train split', low=1)
  c.data.val_size = field(300, 'synthetic: images of the val split', low=1)
  c.data.seed = field(0, "synthetic: the generator's seed", low=0)
  c.data.max_objects = field(3, 'synthetic: most objects in an image', low=1)
  c.data.unlabelled_rate = field(
    0.0,
    'synthetic parts world: fraction of images that also hold an unlabelled body (a '
    "family's body without a part, background in the mask)",
    low=0,
    high=1,
  )
  c.data.part_offset = field(
    -0.3,
    "synthetic parts world: where a part's centre sits outside its body's rim, in part radii "
    '(-0.3: 30% of its radius inside; the pretraining objects follow)',
    low=-1,
    high=0.8,
  )
  c.data.body_aspect = field(
    1.0,
    "synthetic parts world: a body's length over its width; above 1 its part sits at one end "
    'of the long axis (the pretraining objects follow)',
    low=1,
    high=3,
  )
  c.data.body_hues = field(
    'version3',
    "synthetic parts world: the bodies' hues; 'between_parts' puts each a sixth of a turn "
    'from every part hue (data/synthetic_parts.py BODY_HUES; the pretraining objects follow)',
    choices=('version3', 'between_parts'),
  )
  # The extra splits data.extra.layout='split' reads (settings 2 and 3), each built only when
  # read: one object per image on a plainer background; images drawn like train whose label
  # set is wrong at web_noise_rate (data/synthetic.py).
  c.data.single_label_size = field(500, 'synthetic: images of the single_label split', low=1)
  c.data.web_size = field(500, 'synthetic: images of the web split', low=1)
  c.data.web_noise_rate = field(
    0.3, 'synthetic: fraction of web images whose label set is wrong', low=0, high=1
  )
  c.data.classify_split = field('train', "the classifier's split (VOC: 'train_aug')")
  c.data.train_split = field('train', 'split given maps and pseudo labels; trains the segmenter')
  c.data.eval_split = field('val', 'split the segmenter is evaluated on')
  c.data.max_per_split = field(
    0, '> 0: an evenly spaced sample of this many records per split', low=0
  )
  c.data.manual_dir = field('', "voc12: the user's copy (VOCdevkit/VOC2012 at or under it)")
  c.data.saliency_dir = field('', 'real datasets: saliency maps <id>.png (0..255), joined by id')
  c.data.max_skipped_fraction = field(
    0.01, 'a build fails when more of a split is unusable', low=0, high=1
  )
  c.data.voc = Section('VOC 2012 and its augmented set (data/voc.py).')
  c.data.voc.aug_layout = field(
    'seg_class_aug',
    'layout of the augmented masks (SegmentationClassAug, SBD, or none)',
    choices=('seg_class_aug', 'sbd', 'none'),
  )
  c.data.voc.aug_dir = field(
    '', "the augmented masks ('' -> VOC2012/SegmentationClassAug or MANUAL_DIR/benchmark_RELEASE)"
  )
  c.data.voc.train_aug_list = field(
    '', "train_aug's ids ('' -> VOC2012/ImageSets/SegmentationAug/train_aug.txt)"
  )
  c.data.lists = Section('image_lists: splits as list files (data/image_lists.py).')
  c.data.lists.class_list = field('', 'the class names, one a line')
  c.data.lists.image_root = field('', "the images' root; list entries are relative to it")
  c.data.lists.train = field('', 'list file of the train split')
  c.data.lists.val = field('', 'list file of the val split')
  c.data.lists.test = field('', 'list file of the test split')
  c.data.lists.mask_dir = field('', 'ground-truth masks <id>.png')
  c.data.lists.masked_splits = field(('val',), 'the splits that have masks in mask_dir')
  c.data.extra = Section('Settings 2 and 3: extra classifier images (data/mixing.py).')
  c.data.extra.layout = field(
    'none',
    "folders: ROOT/<class>/*.jpg; list: a list file; split: the synthetic dataset's "
    'data.extra.split; none: no extra images',
    choices=('none', 'folders', 'list', 'split'),
  )
  c.data.extra.split = field(
    '', "split layout: the synthetic dataset's extra split ('single_label' or 'web')"
  )
  c.data.extra.root = field('', 'folders: their root; list: the image root')
  c.data.extra.list_file = field('', 'list layout: the list file')
  c.data.extra.is_noisy_source = field(False, 'web images: labels from search queries')
  c.data.extra.ratio = field(1.0, 'extra anchors per epoch, per primary image')
  c.data.extra.mixing = field(
    'plain',
    "how extra images pair up: 'plain' (paper) or 'clean_partners' (noisy sources)",
    choices=('plain', 'clean_partners'),
  )

  c.input = Section("The classifier's input pipeline (data/input_pipeline.py).")
  c.input.size = field(256, 'square resize of classifier inputs', low=16)
  c.input.color_jitter = field(
    (0.3, 0.3, 0.3, 0.1), 'ColorJitter: brightness, contrast, saturation, hue'
  )
  # As the reference makes them: square PIL bilinear resizes of the original image (192 and
  # 512 px for 256), no jitter. False: resample the input tensor on the device (cheaper; the
  # 2x view has no extra detail).
  c.input.views_from_original = field(
    True, 'scaled self views resized from the original image (False: from the input tensor)'
  )
  c.input.mean = field(IMAGENET_MEAN, 'input mean (0..1, RGB); follows model.init_from')
  c.input.std = field(IMAGENET_STD, 'input std (0..1, RGB); follows model.init_from')
  c.input.worker_count = field(0, 'grain worker processes (0 = in-process threads)')
  c.input.prefetch = field(2, 'batches read ahead')

  c.model = Section('The co-attention classifier (models/).')
  c.model.width = field(1.0, 'channel multiplier of the VGG backbone (1.0 = paper)', low=1e-3)
  c.model.feature_dim = field(512, 'channels of the three new conv layers (F); scaled by width')
  c.model.norm = field(
    'none',
    "'batch': BatchNorm in the backbone, for training from scratch",
    choices=('none', 'batch'),
  )
  c.model.dtype = field('float32', "compute dtype; 'bfloat16' for TPU/GPU", choices=DTYPES)
  # The input mean/std follow the weights' convention.
  c.model.init_from = field(
    '',
    "directory made by `cows-jax weights import` the backbone starts from ('' = random init; "
    "'standin' = the config's ImageNet stand-in backbone, `cows-jax pretrain`'s; its old name "
    "'pretrain' works, with a warning, for one release)",
  )
  # Random weights are a smoke test, not the paper.
  c.model.allow_random_init = field(
    False, 'let real datasets train without ImageNet weights (model.init_from, segment.init_from)'
  )

  c.classify = Section('Stage 1: the co-attention classifier (classify.py).')
  c.classify.epochs = field(15, 'epochs of classifier training', low=1)
  c.classify.batch_pairs = field(5, 'image pairs per batch', low=1)
  # N > 0 (the `:pod` preset): N x the device count pairs, base_lr scaled by the linear rule
  # (x that batch / batch_pairs): a departure from the paper.
  c.classify.pairs_per_device = field(
    0, "pairs per device (0: the paper's batch_pairs on any device count)", low=0
  )
  c.classify.warmup_epochs = field(0.0, 'epochs of linear warmup from 0 (the paper: none)', low=0)
  c.classify.base_lr = field(1e-3, 'SGD learning rate', above=0)
  c.classify.momentum = field(0.9, 'SGD momentum', low=0, high=1)
  c.classify.nesterov = field(True, 'Nesterov momentum')
  c.classify.weight_decay = field(5e-4, 'weight decay', low=0)
  c.classify.lr_decay_epochs = field((5, 10), 'epochs after which the lr decays')
  c.classify.lr_decay_factor = field(0.1, 'the lr decay factor', low=0, high=1)
  c.classify.lr_mult_pretrained_weight = field(1.0, 'lr x: pretrained weights', low=0)
  c.classify.lr_mult_pretrained_bias = field(2.0, 'lr x: pretrained biases', low=0)
  c.classify.lr_mult_new_weight = field(10.0, 'lr x: new layers, weights', low=0)
  c.classify.lr_mult_new_bias = field(20.0, 'lr x: new layers, biases', low=0)
  c.classify.self_views = field(
    ('flip', 0.75, 2.0),
    'views of itself the anchor is also paired with (single + co-attention losses); () = none',
  )
  # The reference draws partners with random.choice over the class's images (the anchor
  # included) and keeps each epoch's last partial batch (PyTorch's drop_last=False).
  c.classify.partner_excludes_anchor = field(False, 'partners drawn from other images only')
  c.classify.keep_last_partial_batch = field(True, "train on each epoch's last partial batch")
  c.classify.contrastive_from_epoch = field(
    2, 'epoch index from which contrastive losses count', low=0
  )
  c.classify.loss_weight_single = field(1.0, 'weight of the single-image loss')
  c.classify.loss_weight_coattention = field(1.0, 'weight of the co-attention loss')
  c.classify.loss_weight_contrastive = field(1.0, 'weight of the contrastive losses')
  c.classify.localize_after_epochs = renamed('localize.after_epochs')
  c.classify.log_every_steps = field(50, 'steps between log lines', low=1)
  c.classify.checkpoint_every_steps = field(
    500, 'steps between resume points (every epoch end is kept too)', low=1
  )

  c.localize = Section('Stage 2a: the localization maps (localize.py).')
  # The reference's file 'epoch_10' is saved with the 0-based epoch index: the state after 11.
  c.localize.after_epochs = field(
    11, 'localize uses the classifier as it is after this many completed epochs', low=1
  )
  c.localize.num_related = field(3, 'K related images per class', low=1)
  c.localize.related_excludes_query = field(
    False, "related images drawn from other images only (the reference's may draw m itself)"
  )
  c.localize.gate = field(0.1, 'add a map only if sigmoid(mean(raw map)) > gate', low=0, high=1)
  c.localize.self_views = field(('flip', 0.75, 2.0), 'self views; () = cross-image context only')
  # The reference: truncate the aggregated map to uint8 at map size, then OpenCV INTER_CUBIC
  # to the image size, saturated to 0..255. False: float maps, the same cubic.
  c.localize.quantize_maps = field(
    True, 'maps quantized to uint8 before the resize, as the reference'
  )
  # 'cam': the ablation's baseline inference; 'cam_views': CAMs of the image and of each of
  # localize.self_views, mapped back and aggregated by the paper's rule (its control).
  c.localize.method = field(
    'coattention',
    "'coattention': the paper's maps; 'cam': plain single-image CAMs; 'cam_views': CAMs of "
    'the self views aggregated',
    choices=('coattention', 'cam', 'cam_views'),
  )
  c.localize.batch_size = field(16, 'query images per batch', low=1)
  # Not a hyperparameter: the whole training set's features are kept when they fit (each
  # computed once), else each batch computes the ones it needs (flat memory, more backbone
  # work): VOC at 256 px needs 22 GB, LID about 1 TB.
  c.localize.feature_memory_mib = field(4096, "host memory for the related images' features", low=0)
  c.localize.seed = field(0, 'seed of the related images drawn')

  c.label = Section('Stage 2b: pseudo labels from the maps and saliency (label.py).')
  c.label.use_saliency = field(True, 'use the saliency maps (False: the saliency-free mode)')
  c.label.score_threshold = field(0.3, 'a map counts where it reaches this score', low=0, high=1)
  c.label.conflict_threshold = field(
    0.99, 'a pixel two classes claim above this is ignored', low=0, high=1
  )
  c.label.bg_saliency_ignore = field(
    32, 'saliency (0..255) above which a pixel no map claims is ignored', low=0, high=256
  )
  c.label.fg_confident = field(0.95, 'map score of confident foreground', low=0, high=1)
  c.label.min_fg_fraction = field(
    0.01, 'an image with less foreground than this is ignored', low=0, high=1
  )
  # Saliency-free mode only (this project's addition): objects where a normalized map reaches
  # the object threshold, background where all stay below the background one, the rest
  # ignored (IRN's confident regions, Ahn et al., CVPR 2019). docs/configs.md.
  c.label.thresholds = field(
    'cam_sweep',
    "saliency-free: 'cam_sweep' (the CAM sweep's best, on the split's masks) or 'fixed' "
    '(fg/bg_threshold)',
    choices=('cam_sweep', 'fixed'),
  )
  c.label.sweep_band = field(
    0.3, 'cam_sweep: the background threshold this far below the object one', low=0, high=1
  )
  c.label.fg_threshold = field(0.3, "fixed: object threshold (IRN's conf_fg_thres)", low=0, high=1)
  c.label.bg_threshold = field(
    0.05, "fixed: background threshold (IRN's conf_bg_thres)", low=0, high=1
  )

  c.segment = Section('Stage 3: the DeepLab segmenter (segment.py).')
  c.segment.init_from = field(
    '', "like model.init_from, for the segmenter's backbone; its mean/std follow the weights"
  )
  c.segment.mean = field(IMAGENET_MEAN, 'input mean (0..1, RGB); follows segment.init_from')
  c.segment.std = field(IMAGENET_STD, 'input std (0..1, RGB); follows segment.init_from')
  c.segment.backbone = field(
    'resnet101', "the paper's headline ResNet-101, or VGG16", choices=('resnet101', 'vgg16')
  )
  c.segment.crop_size = field(321, 'square training crop', low=8)
  c.segment.scales = field(
    (0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3), 'random scales of each training crop', above=0
  )
  c.segment.scale_sampling = field(
    'discrete',
    "'discrete': one of scales (the authors' Caffe data layer); 'uniform': between the extremes",
    choices=('discrete', 'uniform'),
  )
  c.segment.mirror = field(True, 'random horizontal flips')
  c.segment.batch_size = field(1, 'crops per micro-step', low=1)
  c.segment.accumulation_steps = field(10, 'micro-steps per update', low=1)
  # 1 x 10 on 8 devices: 2 micro-steps of 8 + 2 crops, not 10 of 1 crop + 7 padding; the same
  # gradient average per update (update_plan.py; BatchNorm statistics, where a backbone
  # trains them, are taken over a micro-step's crops).
  c.segment.fold_accumulation = field(
    True, 'fold the accumulation steps into the devices where they divide the update'
  )
  c.segment.iterations = field(16000, 'updates', low=1)
  c.segment.base_lr = field(1e-3, 'SGD learning rate', above=0)
  c.segment.lr_power = field(0.9, 'power of the poly schedule', low=0)
  c.segment.momentum = field(0.9, 'SGD momentum', low=0, high=1)
  c.segment.weight_decay = field(5e-4, 'weight decay', low=0)
  c.segment.lr_mult_backbone_weight = field(1.0, 'lr x: backbone weights', low=0)
  c.segment.lr_mult_backbone_bias = field(2.0, 'lr x: backbone biases', low=0)
  c.segment.lr_mult_head_weight = field(10.0, 'lr x: head weights', low=0)
  c.segment.lr_mult_head_bias = field(20.0, 'lr x: head biases', low=0)
  c.segment.head = field(
    'largefov', "'largefov' (paper) or 'aspp' (DeepLab-v2 ResNet)", choices=('largefov', 'aspp')
  )
  c.segment.head_dilation = field(12, "dilation of the LargeFOV head's fc6")
  c.segment.head_init = field(
    'caffe',
    "LargeFOV init: 'caffe' (the authors': xavier fc6/fc7, msra score) or 'kaiming' (He "
    'normal, score N(0, 0.01))',
    choices=('caffe', 'kaiming'),
  )
  c.segment.upsample_align_corners = field(
    True,
    "the x8 upsampling of the logits: Caffe's Interp, corners aligned (False: half-pixel)",
  )
  c.segment.head_channels = field(1024, 'channels of the head; scaled by model.width')
  c.segment.aspp_rates = field((6, 12, 18, 24), 'dilations of the ASPP branches')
  # It must match the imported ImageNet weights.
  c.segment.resnet_stride_in_1x1 = field(
    True,
    'resnet101: stride on the first 1x1 conv of a block (Caffe DeepLab-v2), else on the 3x3',
  )
  c.segment.dtype = field(
    'float32', "compute dtype ('bfloat16': mixed precision, params float32)", choices=DTYPES
  )
  c.segment.ignore_index = field(255, 'label value of ignored pixels')
  # 'ground_truth' is the same segmenter on the masks of data.train_split: the fully
  # supervised upper bound every report shows.
  c.segment.supervisions = field(
    ('pseudo', 'ground_truth'), "one segmenter per entry: 'pseudo' and 'ground_truth'"
  )
  c.segment.log_every_steps = field(100, 'steps between log lines', low=1)
  c.segment.checkpoint_every_steps = field(1000, 'steps between resume points', low=1)

  c.inference = Section('The segmenter at test time (inference.py, tta.py).')
  c.inference.scales = field(
    (0.5, 0.75, 1.0, 1.25, 1.5), 'test scales; the probabilities are averaged', above=0
  )
  c.inference.flip = field(True, "average with the mirrored image's prediction")
  c.inference.flip_whole_image = field(
    True, 'mirror the whole image (the reference); False: each window'
  )
  c.inference.window = field(401, 'sliding window (0: each scaled image whole)', low=0)
  c.inference.window_stride = field(
    2 / 3, 'window step as a fraction of the window: int(window * stride)', above=0, high=1
  )
  c.inference.pad = field(
    'bottom_right',
    'scaled images padded up to the window with the mean colour at the bottom/right (the '
    'reference) or centred',
    choices=('bottom_right', 'centre'),
  )
  c.inference.interpolation = field(
    'cubic',
    "image scaling and the probabilities' resize back: 'cubic' (OpenCV's INTER_CUBIC, the "
    "reference) or 'bilinear'",
    choices=('cubic', 'bilinear'),
  )

  c.crf = Section("The dense CRF on the segmenter's output (crf.py).")
  c.crf.iterations = field(1, 'mean-field iterations', low=0)
  c.crf.unary_floor = field(1e-4, 'unary -log(max(p / sum(p), floor)), as the reference')
  c.crf.gaussian_sxy = field(3, 'smoothness kernel: spatial std')
  c.crf.gaussian_compat = field(1, 'smoothness kernel: weight')
  c.crf.bilateral_sxy = field(80, 'appearance kernel: spatial std')
  c.crf.bilateral_srgb = field(4, 'appearance kernel: colour std')
  c.crf.bilateral_compat = field(3, 'appearance kernel: weight')

  c.evaluate = Section('Stage 4: the reports (evaluate.py).')
  c.evaluate.cam_thresholds = field(
    tuple(round(0.05 * i, 2) for i in range(1, 20)),
    'background thresholds of the CAM mIoU sweep; a best value at either end is flagged',
    low=0,
    high=1,
  )
  c.evaluate.num_visualize = field(6, 'images drawn in the report')
  c.evaluate.crf = field(True, 'also report the segmenter with the dense CRF (extra cows_jax[crf])')

  # Not in the paper, which starts from ImageNet weights: the VGG16 backbone at model.width,
  # with BatchNorm, trained as a single-label classifier on the synthetic pretraining set,
  # then BatchNorm folded into the convs; written to DATA_DIR/pretrained/<fingerprint>.
  c.pretrain = Section(
    "`cows-jax pretrain`: the synthetic world's stand-in for ImageNet weights (imagenet_standin/)."
  )
  c.pretrain.num_classes = field(
    144, 'shape x appearance classes, the segmentation classes first', low=1
  )
  c.pretrain.image_size = field(64, 'generated and trained at this size', low=16)
  c.pretrain.train_size = field(14400, 'training images', low=1)
  c.pretrain.val_size = field(1440, 'validation images', low=1)
  c.pretrain.seed = field(0, "the dataset's, the initialization's and the shuffle's seed")
  c.pretrain.epochs = field(30, 'epochs', low=1)
  c.pretrain.batch_size = field(128, 'images per batch', low=1)
  c.pretrain.base_lr = field(0.1, 'SGD; linear warmup, then cosine decay to 0', above=0)
  c.pretrain.warmup_epochs = field(1.0, 'epochs of linear warmup', low=0)
  c.pretrain.momentum = field(0.9, 'SGD momentum', low=0, high=1)
  c.pretrain.nesterov = field(True, 'Nesterov momentum')
  c.pretrain.weight_decay = field(5e-4, 'weight decay', low=0)
  c.pretrain.scales = field((0.8, 1.25), 'random scale (uniform), then mirror and crop', above=0)
  c.pretrain.mirror = field(True, 'random horizontal flips')
  c.pretrain.color_jitter = field(
    (0.3, 0.3, 0.3, 0.0), 'ColorJitter; no hue jitter: the appearance families differ by hue'
  )
  c.pretrain.log_every_steps = field(100, 'steps between log lines', low=1)
  c.pretrain.checkpoint_every_steps = field(1000, 'steps between resume points', low=1)
  c.pretrain.eval_batch_size = field(256, 'images per evaluation batch', low=1)
  c.pretrain.train_eval_size = field(
    1440, 'train images (evenly spaced) of the final train accuracy', low=1
  )
  return c


SCHEMA = Schema(_declare())
FIELDS = SCHEMA.fields


def paper_defaults() -> ml_collections.ConfigDict:
  """Paper defaults for all stages (VOC 2012, setting 1)."""
  return SCHEMA.defaults()


if __name__ == '__main__':
  from cows_jax.configs import schema

  sys.exit(schema.main(SCHEMA, sys.argv))
