"""The reference hyperparameters of the paper, as one ConfigDict.

Every number in the paper lives here under a name; the other configs start from
`paper_defaults()` and override what their setting changes. Code never hard-codes them.
"""

import ml_collections

from cows_jax.models.pretrained import IMAGENET_MEAN, IMAGENET_STD


def paper_defaults() -> ml_collections.ConfigDict:
  """Paper defaults for all stages (VOC 2012, setting 1)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  # Not a hyperparameter: worker processes for the dense CRF and threads that encode and write
  # the files of localize, label, evaluate and predict-split, busy while the device works on
  # the next images (host_pool.py). 0 = every core of the host; 1 = serial. The outputs are
  # the same, byte for byte.
  c.host_workers = 0

  c.data = ml_collections.ConfigDict()
  c.data.name = 'synthetic'
  c.data.data_dir = ''  # '' -> WORKDIR/../data or $COWS_DATA_DIR; see data.sources.
  c.data.num_classes = 10  # object classes, background excluded.
  # synthetic: the generated size; real datasets: records resized to this square size when
  # read (0 = original sizes).
  c.data.image_size = 96
  c.data.train_size = 2000
  c.data.val_size = 300
  c.data.seed = 0
  c.data.max_objects = 3
  # synthetic: the extra splits data.extra.layout='split' reads (settings 2 and 3), each
  # built only when read: one object per image on a plainer background; images drawn like
  # train whose label set is wrong at web_noise_rate (data/synthetic.py).
  c.data.single_label_size = 500
  c.data.web_size = 500
  c.data.web_noise_rate = 0.3
  c.data.classify_split = 'train'  # the classifier's split (VOC: 'train_aug').
  c.data.train_split = 'train'  # split given maps and pseudo labels; trains the segmenter.
  c.data.eval_split = 'val'  # split the segmenter is evaluated on.
  c.data.max_per_split = 0  # > 0: an evenly spaced sample of this many records per split.
  c.data.manual_dir = ''  # voc12: the user's copy (VOCdevkit/VOC2012 at or under it).
  c.data.saliency_dir = ''  # real datasets: saliency maps <id>.png (0..255), joined by id.
  c.data.max_skipped_fraction = 0.01  # a build fails when more of a split is unusable.
  c.data.voc = ml_collections.ConfigDict()
  c.data.voc.aug_layout = 'seg_class_aug'  # 'seg_class_aug' | 'sbd' | 'none' (data.voc).
  c.data.voc.aug_dir = ''  # '' -> VOC2012/SegmentationClassAug or MANUAL_DIR/benchmark_RELEASE.
  c.data.voc.train_aug_list = ''  # '' -> VOC2012/ImageSets/SegmentationAug/train_aug.txt.
  c.data.lists = ml_collections.ConfigDict()  # image_lists: splits as list files.
  c.data.lists.class_list = ''
  c.data.lists.image_root = ''
  c.data.lists.train = ''
  c.data.lists.val = ''
  c.data.lists.test = ''
  c.data.lists.mask_dir = ''
  c.data.lists.masked_splits = ('val',)
  c.data.extra = ml_collections.ConfigDict()  # settings 2 and 3: extra classifier images.
  # 'folders' (ROOT/<class>/*.jpg) | 'list' | 'split' (synthetic: data.extra.split) | 'none'.
  c.data.extra.layout = 'none'
  c.data.extra.split = ''  # split: 'single_label' | 'web' (the synthetic dataset's extras).
  c.data.extra.root = ''  # folders: their root; list: the image root.
  c.data.extra.list_file = ''
  c.data.extra.is_noisy_source = False  # web images: labels from search queries.
  c.data.extra.ratio = 1.0  # extra anchors per epoch, per primary image.
  c.data.extra.mixing = 'plain'  # 'plain' (paper) | 'clean_partners' (noisy sources).

  c.input = ml_collections.ConfigDict()
  c.input.size = 256  # square resize of classifier inputs.
  c.input.color_jitter = (0.3, 0.3, 0.3, 0.1)  # brightness, contrast, saturation, hue.
  # Scaled self views (classify.self_views, localize.self_views) as the reference makes them:
  # square PIL bilinear resizes of the original image (192 and 512 px for 256), no jitter.
  # False: resample the input tensor on the device (cheaper; the 2x view has no extra detail).
  c.input.views_from_original = True
  c.input.mean = IMAGENET_MEAN
  c.input.std = IMAGENET_STD
  c.input.worker_count = 0  # grain worker processes (0 = in-process threads).
  c.input.prefetch = 2

  c.model = ml_collections.ConfigDict()
  c.model.width = 1.0  # channel multiplier of the VGG backbone (1.0 = paper).
  c.model.feature_dim = 512  # channels of the three new conv layers (F); scaled by width.
  c.model.norm = 'none'  # 'batch': BatchNorm in the backbone, for training from scratch.
  c.model.dtype = 'float32'  # compute dtype; 'bfloat16' for TPU/GPU.
  # Directory made by `cows-jax weights import` (ImageNet weights): the backbone starts from
  # it and the input mean/std follow its convention. '' = random init (the synthetic demo).
  c.model.init_from = ''
  # Real datasets stop before training without ImageNet weights (model.init_from,
  # segment.init_from) unless this is set: random weights are a smoke test, not the paper.
  c.model.allow_random_init = False

  c.classify = ml_collections.ConfigDict()
  c.classify.epochs = 15
  c.classify.batch_pairs = 5
  # 0: the paper's batch_pairs on any device count. N > 0 (the `:pod` preset): a batch of N
  # pairs per device (N x the device count) and base_lr scaled by the linear rule (x that
  # batch / batch_pairs): a departure from the paper.
  c.classify.pairs_per_device = 0
  # Linear warmup from 0 over these epochs (the paper: none); the `:pod` preset's large
  # batches start with one.
  c.classify.warmup_epochs = 0.0
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
  # The reference draws partners with random.choice over the class's images (the anchor
  # included) and keeps each epoch's last partial batch (PyTorch's drop_last=False).
  c.classify.partner_excludes_anchor = False
  c.classify.keep_last_partial_batch = True
  c.classify.contrastive_from_epoch = 2  # epoch index from which contrastive losses count.
  c.classify.loss_weight_single = 1.0
  c.classify.loss_weight_coattention = 1.0
  c.classify.loss_weight_contrastive = 1.0
  # `localize` uses the classifier as it is after this many completed epochs. The reference's
  # file 'epoch_10' is saved with the 0-based epoch index, so it holds the state after 11.
  c.classify.localize_after_epochs = 11
  c.classify.log_every_steps = 50
  c.classify.checkpoint_every_steps = 500  # resume points; every epoch end is kept too.

  c.localize = ml_collections.ConfigDict()
  c.localize.num_related = 3  # K related images per class.
  c.localize.related_excludes_query = False  # the reference's random.choices may draw m itself.
  c.localize.gate = 0.1  # add a map only if sigmoid(mean(raw map)) > gate.
  c.localize.self_views = ('flip', 0.75, 2.0)  # () = cross-image context only.
  # The reference: truncate the aggregated map to uint8 at map size, then OpenCV INTER_CUBIC
  # to the image size, saturated to 0..255. False: float maps, the same cubic.
  c.localize.quantize_maps = True
  # 'coattention': the paper's maps (co-attention with related images and self views);
  # 'cam': plain single-image CAMs of the classifier (the ablation's baseline inference);
  # 'cam_views': CAMs of the image and of each of localize.self_views, mapped back and
  # aggregated by the paper's rule (the ablation's control for the multi-view average).
  c.localize.method = 'coattention'
  c.localize.batch_size = 16
  # Not a hyperparameter: host memory for the related images' features. The whole training
  # set's are kept when they fit (each computed once), else each batch computes the ones it
  # needs (flat memory, more backbone work): VOC at 256 px needs 22 GB, LID about 1 TB.
  c.localize.feature_memory_mib = 4096
  c.localize.seed = 0

  c.label = ml_collections.ConfigDict()
  c.label.use_saliency = True
  c.label.score_threshold = 0.3
  c.label.conflict_threshold = 0.99
  c.label.bg_saliency_ignore = 32
  c.label.fg_confident = 0.95
  c.label.min_fg_fraction = 0.01
  # Saliency-free mode only (use_saliency=False, this project's addition): objects where a
  # normalized map reaches the object threshold, background where all stay below the
  # background one, the rest ignored (IRN's confident regions, Ahn et al., CVPR 2019).
  # 'cam_sweep': the object threshold is the CAM sweep's best on the split's masks, the
  # background one sweep_band below; 'fixed' (or no masks): fg/bg_threshold, IRN's values
  # for ImageNet-pretrained CAMs (conf_fg_thres, conf_bg_thres). docs/configs.md.
  c.label.thresholds = 'cam_sweep'
  c.label.sweep_band = 0.3
  c.label.fg_threshold = 0.3
  c.label.bg_threshold = 0.05

  c.segment = ml_collections.ConfigDict()
  # Like model.init_from, for the segmenter's backbone (e.g. the DeepLab ResNet-101 Caffe
  # init); its input mean/std (0..1 scale, RGB) follow the weights' convention when set.
  c.segment.init_from = ''
  c.segment.mean = IMAGENET_MEAN
  c.segment.std = IMAGENET_STD
  c.segment.backbone = 'resnet101'  # 'resnet101' (the paper's headline number) | 'vgg16'.
  c.segment.crop_size = 321
  # Random scale of each training crop: one of these (the authors' Caffe data layer), or
  # uniform between the extremes with scale_sampling='uniform'.
  c.segment.scales = (0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3)
  c.segment.scale_sampling = 'discrete'
  c.segment.mirror = True
  c.segment.batch_size = 1
  c.segment.accumulation_steps = 10
  # Fold the accumulation steps into the devices where they divide the update (1 x 10 on 8
  # devices: 2 micro-steps of 8 + 2 crops, not 10 of 1 crop + 7 padding): the same gradient
  # average per update (update_plan.py; BatchNorm statistics, where a backbone trains them,
  # are taken over a micro-step's crops). False: the reference's micro-steps as written.
  c.segment.fold_accumulation = True
  c.segment.iterations = 16000
  c.segment.base_lr = 1e-3
  c.segment.lr_power = 0.9
  c.segment.momentum = 0.9
  c.segment.weight_decay = 5e-4
  c.segment.lr_mult_backbone_weight = 1.0
  c.segment.lr_mult_backbone_bias = 2.0
  c.segment.lr_mult_head_weight = 10.0
  c.segment.lr_mult_head_bias = 20.0
  c.segment.head = 'largefov'  # 'largefov' (paper) | 'aspp' (DeepLab-v2 ResNet).
  c.segment.head_dilation = 12
  # LargeFOV init: 'caffe' (the authors': xavier fc6/fc7, msra score) | 'kaiming' (fc6/fc7 He
  # normal, score N(0, 0.01)).
  c.segment.head_init = 'caffe'
  # The x8 upsampling of the logits, in training and test: Caffe's Interp (corners aligned,
  # 41 -> 321) as the reference; False: half-pixel bilinear.
  c.segment.upsample_align_corners = True
  c.segment.head_channels = 1024  # scaled by model.width.
  c.segment.aspp_rates = (6, 12, 18, 24)
  # resnet101: stride on the first 1x1 conv of a block (Caffe DeepLab-v2) or on the 3x3 conv
  # (torchvision); it must match the imported ImageNet weights.
  c.segment.resnet_stride_in_1x1 = True
  c.segment.dtype = 'float32'  # compute dtype ('bfloat16': mixed precision, params float32).
  c.segment.ignore_index = 255
  # One segmenter per entry: 'pseudo' (the paper's) and 'ground_truth' (the same segmenter on
  # the masks of data.train_split: the fully supervised upper bound every report shows).
  c.segment.supervisions = ('pseudo', 'ground_truth')
  c.segment.log_every_steps = 100
  c.segment.checkpoint_every_steps = 1000

  c.inference = ml_collections.ConfigDict()  # the segmenter at test time (inference.py).
  c.inference.scales = (0.5, 0.75, 1.0, 1.25, 1.5)
  c.inference.flip = True  # average with the mirrored image's prediction.
  c.inference.flip_whole_image = True  # the reference mirrors the image; False: each window.
  c.inference.window = 401  # sliding window (0: each scaled image whole).
  c.inference.window_stride = 2 / 3  # window step: int(window * stride), 267 px.
  # Scaled images padded up to the window at the bottom/right with the mean colour (the
  # reference) or 'centre'; image scaling and the probabilities' resize back 'cubic' (the
  # reference, OpenCV's INTER_CUBIC) or 'bilinear'.
  c.inference.pad = 'bottom_right'
  c.inference.interpolation = 'cubic'

  c.crf = ml_collections.ConfigDict()  # dense CRF on the segmenter's output (crf.py).
  c.crf.iterations = 1
  c.crf.unary_floor = 1e-4  # unary -log(max(p / sum(p), floor)), as the reference.
  c.crf.gaussian_sxy = 3
  c.crf.gaussian_compat = 1
  c.crf.bilateral_sxy = 80
  c.crf.bilateral_srgb = 4
  c.crf.bilateral_compat = 3

  c.evaluate = ml_collections.ConfigDict()
  # Background thresholds of the CAM mIoU sweep; a best value at either end is flagged.
  c.evaluate.cam_thresholds = tuple(round(0.05 * i, 2) for i in range(1, 20))
  c.evaluate.num_visualize = 6
  c.evaluate.crf = True  # also report the segmenter with the dense CRF (extra cows_jax[crf]).

  # Not in the paper, which starts from ImageNet weights: `cows-jax pretrain` makes the
  # synthetic world's stand-in (docs/pretrain.md). The VGG16 backbone at model.width, with
  # BatchNorm, trained as a single-label classifier on the synthetic pretraining set, then
  # BatchNorm folded into the convs; written to DATA_DIR/pretrained/<fingerprint>.
  c.pretrain = ml_collections.ConfigDict()
  c.pretrain.num_classes = 144  # shape x appearance classes, the segmentation classes first.
  c.pretrain.image_size = 64  # generated and trained at this size.
  c.pretrain.train_size = 14400
  c.pretrain.val_size = 1440
  c.pretrain.seed = 0  # the dataset's, the initialization's and the shuffle's.
  c.pretrain.epochs = 30
  c.pretrain.batch_size = 128
  c.pretrain.base_lr = 0.1  # SGD; linear warmup, then cosine decay to 0.
  c.pretrain.warmup_epochs = 1.0
  c.pretrain.momentum = 0.9
  c.pretrain.nesterov = True
  c.pretrain.weight_decay = 5e-4
  c.pretrain.scales = (0.8, 1.25)  # random scale (uniform), then mirror and crop.
  c.pretrain.mirror = True
  # No hue jitter: the appearance families differ by hue.
  c.pretrain.color_jitter = (0.3, 0.3, 0.3, 0.0)
  c.pretrain.log_every_steps = 100
  c.pretrain.checkpoint_every_steps = 1000
  c.pretrain.eval_batch_size = 256
  c.pretrain.train_eval_size = 1440  # train images (evenly spaced) of the final train accuracy.
  return c
