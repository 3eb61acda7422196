"""The reference hyperparameters of the paper, as one ConfigDict.

Every number in ../shared/paper.md lives here under a name; configs/*.py start from
`paper_defaults()` and override what their setting changes. Code never hard-codes them.
"""

import ml_collections

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def paper_defaults() -> ml_collections.ConfigDict:
  """Paper defaults for all stages (VOC 2012, setting 1)."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.name = 'synthetic'
  c.data.data_dir = ''  # '' -> WORKDIR/../data or $COWS_DATA_DIR; see data.sources.
  c.data.num_classes = 10  # object classes, background excluded.
  c.data.image_size = 96
  c.data.train_size = 2000
  c.data.val_size = 300
  c.data.seed = 0
  c.data.max_objects = 3

  c.input = ml_collections.ConfigDict()
  c.input.size = 256  # square resize of classifier inputs.
  c.input.color_jitter = (0.3, 0.3, 0.3, 0.1)  # brightness, contrast, saturation, hue.
  c.input.mean = IMAGENET_MEAN
  c.input.std = IMAGENET_STD
  c.input.worker_count = 0  # grain worker processes (0 = in-process threads).
  c.input.prefetch = 2

  c.model = ml_collections.ConfigDict()
  c.model.width = 1.0  # channel multiplier of the VGG backbone (1.0 = paper).
  c.model.feature_dim = 512  # channels of the three new conv layers (F); scaled by width.
  c.model.norm = 'none'  # 'batch': BatchNorm in the backbone, for training from scratch.
  c.model.dtype = 'float32'  # compute dtype; 'bfloat16' for TPU/GPU.

  c.classify = ml_collections.ConfigDict()
  c.classify.epochs = 15
  c.classify.batch_pairs = 5
  c.classify.base_lr = 1e-3
  c.classify.momentum = 0.9
  c.classify.nesterov = True
  c.classify.weight_decay = 5e-4
  c.classify.lr_decay_epochs = (5, 10)
  c.classify.lr_decay_factor = 0.1
  c.classify.lr_mult_pretrained_weight = 1.0
  c.classify.lr_mult_pretrained_bias = 2.0
  c.classify.lr_mult_new_weight = 10.0
  c.classify.lr_mult_new_bias = 20.0
  # The anchor is also paired with these views of itself (single + co-attention losses,
  # target l_m, no contrastive loss); () trains on (m, n) pairs only.
  c.classify.self_views = ('flip', 0.75, 2.0)
  c.classify.contrastive_from_epoch = 2  # epoch index from which contrastive losses count.
  c.classify.loss_weight_single = 1.0
  c.classify.loss_weight_coattention = 1.0
  c.classify.loss_weight_contrastive = 1.0
  c.classify.localize_epoch = 10  # checkpoint (end of epoch) used by `localize`.
  c.classify.log_every_steps = 50
  c.classify.checkpoint_every_steps = 500  # resume points; every epoch end is kept too.

  c.localize = ml_collections.ConfigDict()
  c.localize.num_related = 3  # K related images per class.
  c.localize.gate = 0.1  # add a map only if sigmoid(mean(raw map)) > gate.
  c.localize.self_views = ('flip', 0.75, 2.0)  # () = cross-image context only.
  # 'coattention': the paper's maps (co-attention with related images and self views);
  # 'cam': plain single-image CAMs of the classifier (the ablation's baseline inference).
  c.localize.method = 'coattention'
  c.localize.batch_size = 16
  c.localize.seed = 0

  c.label = ml_collections.ConfigDict()
  c.label.use_saliency = True
  c.label.score_threshold = 0.3
  c.label.conflict_threshold = 0.99
  c.label.bg_saliency_ignore = 32
  c.label.fg_confident = 0.95
  c.label.min_fg_fraction = 0.01
  c.label.bg_threshold = 0.3  # saliency-free mode only.

  c.segment = ml_collections.ConfigDict()
  c.segment.backbone = 'vgg16'
  c.segment.crop_size = 321
  c.segment.scale_range = (0.7, 1.3)
  c.segment.mirror = True
  c.segment.batch_size = 1
  c.segment.accumulation_steps = 10
  c.segment.iterations = 16000
  c.segment.base_lr = 1e-3
  c.segment.lr_power = 0.9
  c.segment.momentum = 0.9
  c.segment.weight_decay = 5e-4
  c.segment.lr_mult_backbone_weight = 1.0
  c.segment.lr_mult_backbone_bias = 2.0
  c.segment.lr_mult_head_weight = 10.0
  c.segment.lr_mult_head_bias = 20.0
  c.segment.head_dilation = 12
  c.segment.head_channels = 1024  # scaled by model.width.
  c.segment.ignore_index = 255
  c.segment.log_every_steps = 100
  c.segment.eval_batch_size = 8
  c.segment.checkpoint_every_steps = 1000

  c.evaluate = ml_collections.ConfigDict()
  c.evaluate.cam_thresholds = tuple(round(0.05 * i, 2) for i in range(1, 13))
  c.evaluate.num_visualize = 6
  return c
