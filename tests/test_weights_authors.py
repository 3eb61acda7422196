"""The authors' trained models: a classifier checkpoint as the reference's train.py saves it and
the released DeepLab-v2 ResNet-101 LargeFOV segmenter as a .caffemodel, both made here with
random weights in those exact layouts (authors_models.py). Imported, they restore through the
stages' own code (localize's classifier checkpoint, evaluate's segmenter) and compute what the
reference networks compute; bad files give one-line errors."""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from cows_jax import checkpoints, cli, config, run_dir
from cows_jax.models import from_config, imported
from cows_jax.tools import weights_import

torch = pytest.importorskip(
  'torch',
  reason='torch is not installed: .ci/run installs it; '
  'pip install torch==2.13.0 to run the import tests',
)
import authors_models as am  # noqa: E402  (needs torch)

# Tiny widths: the VGG at width 1/8 (conv1 8 channels, features 64), 10 classes; ResNet-101 at
# width 1/16 (conv1 4 channels, head 64 = 1024 / 16), 10 classes + background.
CLS_BASE, CLS_DIM, CLASSES = 8, 64, 10
SEG_BASE, SEG_HEAD = 4, 64
CAFFE_BGR_MEAN = (104.008, 116.669, 122.675)


def _nhwc(a):
  return np.asarray(a).transpose(0, 2, 3, 1)


def _close(got, expected):
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@pytest.fixture(scope='module')
def classifier():
  return am.random_coattention(CLS_BASE, CLS_DIM, CLASSES)


@pytest.fixture(scope='module')
def segmenter_layers():
  return am.caffe_layers(am.random_deeplab(SEG_BASE, SEG_HEAD, CLASSES + 1))


def _classifier_config(tiny_config, provenance, **fields):
  cfg = tiny_config
  cfg.model.width, cfg.model.norm, cfg.input.size = CLS_BASE / 64, 'none', 64
  cfg.model.init_from = provenance['trained_model']['init_from']
  cfg.localize.after_epochs = provenance['trained_model']['config']['localize.after_epochs']
  for field, value in fields.items():
    section, name = field.split('.')
    cfg[section][name] = value
  return config.finalize(cfg)


def _restore_classifier(cfg, workdir):
  """The classifier as `localize` restores it: the checkpoint of the configured epoch."""
  run = run_dir.RunDir(workdir)
  step = run_dir.classifier_epoch_step(run, cfg.localize.after_epochs)
  model = from_config.classifier(cfg)
  like = from_config.abstract_variables(model, cfg)
  return model, checkpoints.restore_variables(run.classifier(), step, like, 'classify')


def _segmenter_config(tiny_config, provenance, base=SEG_BASE, head='largefov'):
  cfg = tiny_config
  cfg.model.width = base / 64
  cfg.segment.backbone, cfg.segment.head, cfg.segment.head_dilation = 'resnet101', head, 12
  cfg.segment.init_from = provenance['trained_model']['init_from']
  cfg.segment.supervisions = ('pseudo',)
  return config.finalize(cfg)


def _restore_segmenter(cfg, workdir):
  """The segmenter as `evaluate` restores it (inference.load_predictor): the latest step."""
  model = from_config.segmenter(cfg)
  like = from_config.abstract_variables(model, cfg)
  directory = run_dir.RunDir(workdir).segmenter('pseudo')
  return model, checkpoints.restore_variables(directory, None, like, 'segment')


def test_reference_classifier_checkpoint_matches_pytorch(classifier, tmp_path, tiny_config):
  """pascal_voc_epoch_1.pth as train.py saves it ({'epoch', 'global_counter', 'state_dict' of
  a DataParallel model, 'optimizer'}): scores, CAMs and co-attention maps of a pair equal the
  reference network's, the pair of different sizes."""
  src = str(tmp_path / 'pascal_voc_epoch_1.pth')
  torch.save(am.training_checkpoint(classifier, epoch=1, global_counter=14), src)
  provenance = weights_import.import_trained('coattention_vgg16', src, str(tmp_path / 'run'))
  trained = provenance['trained_model']
  assert trained['step'] == 14  # 2 epochs of 7 steps: epochs.json says so.
  assert trained['config'] == {
    'data.num_classes': CLASSES,
    'model.width': CLS_BASE / 64,
    'model.feature_dim': 512,
    'model.norm': 'none',
    'localize.after_epochs': 2,
  }
  assert provenance['arch'] == 'vgg16' and provenance['input']['name'] == 'torchvision'
  assert provenance['ignored_keys'] == []

  cfg = _classifier_config(tiny_config, provenance)
  assert cfg.input.mean == imported.IMAGENET_MEAN  # the reference's normalization.
  model, (variables, step) = _restore_classifier(cfg, str(tmp_path / 'run'))
  assert step == 14

  rng = np.random.default_rng(0)
  x_m = rng.normal(size=(2, 3, 64, 64)).astype(np.float32)
  x_n = rng.normal(size=(2, 3, 56, 48)).astype(np.float32)
  with torch.no_grad():
    expected = {k: v.numpy() for k, v in classifier(torch.tensor(x_m), torch.tensor(x_n)).items()}
  f_m = model.apply(variables, _nhwc(x_m), method=model.features)
  f_n = model.apply(variables, _nhwc(x_n), method=model.features)
  maps_m, maps_n = model.apply(variables, f_m, f_n, method=model.pair_maps)
  got = {
    **model.apply(variables, f_m, f_n, method=model.pair_head)._asdict(),
    'cam_m': model.apply(variables, f_m, method=model.cam),
    'cam_n': model.apply(variables, f_n, method=model.cam),
    'co_map_m': maps_m,
    'co_map_n': maps_n,
  }
  assert set(got) == set(expected)
  for name, value in expected.items():
    _close(np.asarray(got[name]), _nhwc(value) if value.ndim == 4 else value)


@pytest.mark.parametrize('layout', ['state_dict', 'module_state_dict'])
def test_bare_state_dicts_need_epochs_and_import_alike(classifier, tmp_path, layout):
  """A state dict saved without train.py's wrapper (with or without DataParallel's
  `module.`) holds the same arrays; it has no epoch, so --epochs says which it is."""
  ref = str(tmp_path / 'ref.pth')
  torch.save(am.training_checkpoint(classifier, epoch=2, global_counter=3), ref)
  state = classifier.state_dict()
  if layout == 'module_state_dict':
    state = {f'module.{k}': v for k, v in state.items()}
  bare = str(tmp_path / 'bare.pth')
  torch.save(state, bare)
  with pytest.raises(imported.WeightsError, match=r"bare.pth: no 'epoch' field.*--epochs N"):
    weights_import.import_trained('coattention_vgg16', bare, str(tmp_path / 'a'))
  weights_import.import_trained('coattention_vgg16', ref, str(tmp_path / 'a'))
  provenance = weights_import.import_trained('coattention_vgg16', bare, str(tmp_path / 'b'), 3)
  assert provenance['trained_model']['step'] == 3  # one step per epoch, 3 epochs.
  # 3 steps over 3 epochs: 1 step each; both say which epoch ends where.
  for out in 'ab':
    record = run_dir.read_json(run_dir.RunDir(tmp_path / out).classifier_epochs(), 'classify')
    assert record == {'steps_per_epoch': 1, 'epoch_end_steps': [1, 2, 3]}
  with ocp.StandardCheckpointer() as ckptr:
    a, b = (
      ckptr.restore(run_dir.RunDir(tmp_path / out).classifier() / '3' / 'variables') for out in 'ab'
    )
  jax.tree.map(np.testing.assert_array_equal, a, b)


def _caffe_input(rgb):
  """The Caffe net's input of RGB 0..255 images [B,H,W,3]: BGR minus the mean, NCHW."""
  bgr = (rgb[..., ::-1] - CAFFE_BGR_MEAN).astype(np.float32)
  return torch.tensor(np.ascontiguousarray(bgr.transpose(0, 3, 1, 2)))


def test_released_segmenter_caffemodel_matches_caffe_net(tmp_path, tiny_config):
  """res_fov2a.caffemodel with deploy_resnet_fov.prototxt's layers (ResNet-101 conv/BatchNorm/
  Scale, LargeFOV head pyram_conv1, pyram_conv2, score): the logits of an RGB image, normalized
  by the imported convention, equal the Caffe net's on the BGR image minus the mean. 129 px
  (a size where Caffe's ceil-mode pool1 and floor-mode pooling agree): 17x17 logits, so the
  dilation-12 head sees past its centre tap."""
  torch_model = am.random_deeplab(SEG_BASE, SEG_HEAD, CLASSES + 1)
  src = str(tmp_path / 'res_fov2a.caffemodel')
  am.write_caffemodel(src, am.caffe_layers(torch_model))
  provenance = weights_import.import_trained('deeplab_v2_resnet101', src, str(tmp_path / 'run'))
  assert provenance['stride_in_1x1'] is True and provenance['input']['name'] == 'caffe'
  assert provenance['trained_model']['step'] == 160000  # the solver's 16,000 x iter_size 10.
  assert provenance['trained_model']['config'] == {
    'data.num_classes': CLASSES,
    'model.width': SEG_BASE / 64,
    'segment.backbone': 'resnet101',
    'segment.head': 'largefov',
    'segment.head_dilation': 12,
    'segment.head_channels': 1024,
  }
  cfg = _segmenter_config(tiny_config, provenance)
  assert cfg.segment.resnet_stride_in_1x1 is True
  model, (variables, step) = _restore_segmenter(cfg, str(tmp_path / 'run'))
  assert step == 160000

  rgb = np.random.default_rng(0).uniform(0, 255, size=(1, 129, 129, 3)).astype(np.float32)
  x = (rgb / 255 - np.array(cfg.segment.mean)) / np.array(cfg.segment.std)
  got = np.asarray(model.apply(variables, x.astype(np.float32)))
  with torch.no_grad():
    expected = _nhwc(torch_model(_caffe_input(rgb)).numpy())
  assert got.shape == expected.shape == (1, 17, 17, CLASSES + 1)
  _close(got, expected)


def test_deeplab_v2_aspp_head_imports_too(tmp_path, tiny_config):
  """DeepLab-v2's own release names its ASPP head fc1_voc12_c0..c3 (rates 6, 12, 18, 24)."""
  torch_model = am.random_deeplab(SEG_BASE, SEG_HEAD, CLASSES + 1, head='aspp')
  src = str(tmp_path / 'train_iter_20000.caffemodel')
  am.write_caffemodel(src, am.caffe_layers(torch_model))
  provenance = weights_import.import_trained('deeplab_v2_resnet101', src, str(tmp_path / 'run'))
  assert provenance['trained_model']['config']['segment.head'] == 'aspp'
  model, (variables, _) = _restore_segmenter(
    _segmenter_config(tiny_config, provenance, head='aspp'), str(tmp_path / 'run')
  )
  rgb = np.random.default_rng(1).uniform(0, 255, size=(1, 65, 65, 3)).astype(np.float32)
  got = np.asarray(model.apply(variables, (rgb - CAFFE_BGR_MEAN[::-1]).astype(np.float32)))
  with torch.no_grad():
    expected = _nhwc(torch_model(_caffe_input(rgb)).numpy())
  _close(got, expected)


def test_authors_models_drive_localize_label_evaluate(tmp_path, tiny_config):
  """Both models imported into one WORKDIR: localize, label and evaluate run on them with the
  flags the import prints, and `segment` leaves the imported segmenter alone (complete)."""
  src = str(tmp_path / 'c.pth')
  torch.save(
    am.training_checkpoint(am.random_coattention(8, 64, CLASSES), epoch=1, global_counter=8), src
  )
  workdir = str(tmp_path / 'run')
  classifier = weights_import.import_trained('coattention_vgg16', src, workdir)
  am.write_caffemodel(
    tmp_path / 's.caffemodel', am.caffe_layers(am.random_deeplab(8, 128, CLASSES + 1))
  )
  segmenter = weights_import.import_trained(
    'deeplab_v2_resnet101', str(tmp_path / 's.caffemodel'), workdir
  )
  cfg = tiny_config
  cfg.model.init_from = classifier['trained_model']['init_from']
  cfg.segment.init_from = segmenter['trained_model']['init_from']
  for provenance in (classifier, segmenter):
    for field, value in provenance['trained_model']['config'].items():
      section, name = field.split('.')
      cfg[section][name] = value
  cfg.segment.supervisions = ('pseudo',)
  cfg.evaluate.crf, cfg.evaluate.num_visualize = False, 2
  cfg.inference.scales, cfg.inference.flip = (1.0,), False
  for stage in ('localize', 'label', 'segment', 'evaluate'):
    cli.run_stage(stage, cfg, workdir)
  summary = run_dir.read_json(run_dir.RunDir(workdir).reports() / 'summary.json', 'evaluate')
  assert 0 <= summary['segmentation_miou'] <= 100 and summary['num_val'] == 8
  assert sorted(os.listdir(run_dir.RunDir(workdir).segmenter())) == ['160000']


def _errors(tmp_path, capsys, arch, src, *extra):
  """The CLI's output for a bad file: exit status 1 and one line naming it, no traceback."""
  out = str(tmp_path / f'out_{len(os.listdir(tmp_path))}')
  status = weights_import.main(['import', '--arch', arch, '--src', str(src), '--out', out, *extra])
  err = capsys.readouterr().err
  assert status == 1 and err.count('\n') == 1 and 'Traceback' not in err, err
  assert err.startswith('cows-jax weights import: error: ')
  assert not os.path.exists(os.path.join(out, 'imported'))
  return err


def test_bad_classifier_files_give_one_line_errors(classifier, tmp_path, capsys):
  ckpt = am.training_checkpoint(classifier, epoch=0, global_counter=1)
  state = ckpt['state_dict']
  arch = 'coattention_vgg16'

  del state['module.extra_linear_e.weight']
  torch.save(ckpt, tmp_path / 'missing.pth')
  err = _errors(tmp_path, capsys, arch, tmp_path / 'missing.pth')
  assert 'missing.pth: 1 keys of the reference co-attention classifier are missing' in err
  assert 'extra_linear_e.weight; import the whole checkpoint' in err

  state['module.extra_linear_e.weight'] = torch.zeros(CLS_DIM, CLS_DIM)
  state['module.extra_gate.weight'] = torch.zeros(CLASSES + 1, CLS_DIM, 1, 1)
  torch.save(ckpt, tmp_path / 'shape.pth')
  err = _errors(tmp_path, capsys, arch, tmp_path / 'shape.pth')
  assert (
    'shape.pth does not fit the reference co-attention classifier (10 classes, '
    'model.width=0.125): extra_gate.weight: file (11, 64, 1, 1), expected (10, 64, 1, 1)'
  ) in err

  state['module.extra_gate.weight'] = torch.zeros(CLASSES, CLS_DIM)  # a Linear, not a conv.
  torch.save(ckpt, tmp_path / 'rank.pth')
  err = _errors(tmp_path, capsys, arch, tmp_path / 'rank.pth')
  assert 'rank.pth: arrays of another layout: extra_gate.weight: 2-d, expected 4-d' in err

  torch.save({'features.0.weight': torch.zeros(64, 3, 3, 3)}, tmp_path / 'vgg16.pth')
  err = _errors(tmp_path, capsys, arch, tmp_path / 'vgg16.pth')
  assert 'none of its keys are the reference co-attention classifier' in err
  assert '--arch vgg16' in err

  (tmp_path / 'junk.pth').write_bytes(b'\x00' * 64)
  assert 'junk.pth: not a readable PyTorch file' in _errors(
    tmp_path, capsys, arch, tmp_path / 'junk.pth'
  )
  assert 'does not exist' in _errors(tmp_path, capsys, arch, tmp_path / 'absent.pth')


def test_bad_segmenter_files_give_one_line_errors(segmenter_layers, tmp_path, capsys):
  arch = 'deeplab_v2_resnet101'

  def caffemodel(name, layers):
    am.write_caffemodel(tmp_path / name, layers)
    return tmp_path / name

  backbone = {k: v for k, v in segmenter_layers.items() if k not in ('pyram_conv1', 'score')}
  err = _errors(tmp_path, capsys, arch, caffemodel('init.caffemodel', backbone))
  assert 'init.caffemodel: no segmenter head' in err and '(found pyram_conv2)' in err
  assert 'imports with --arch resnet101' in err

  cut = {k: v for k, v in segmenter_layers.items() if not k.endswith('4b22_branch2c')}
  err = _errors(tmp_path, capsys, arch, caffemodel('cut.caffemodel', cut))
  assert 'cut.caffemodel: 3 ResNet-101 layers are missing: res4b22_branch2c, ' in err

  biased = dict(segmenter_layers, pyram_conv1=[*segmenter_layers['pyram_conv1'], np.zeros(64)])
  err = _errors(tmp_path, capsys, arch, caffemodel('biased.caffemodel', biased))
  assert 'pyram_conv1 has a bias; the model expects none' in err

  wide = dict(segmenter_layers, score=[np.zeros((11, 32, 1, 1)), np.zeros(11)])
  err = _errors(tmp_path, capsys, arch, caffemodel('wide.caffemodel', wide))
  assert 'layer score blob 0: file (11, 32, 1, 1), expected (11, 64, 1, 1)' in err

  flat = dict(segmenter_layers, res2a_branch2a=[np.zeros((4, 4))])
  err = _errors(tmp_path, capsys, arch, caffemodel('flat.caffemodel', flat))
  assert 'flat.caffemodel: an array of unexpected rank or size' in err

  (tmp_path / 'trunc.caffemodel').write_bytes(
    caffemodel('whole.caffemodel', segmenter_layers).read_bytes()[:5000]
  )
  assert 'not a readable caffemodel' in _errors(
    tmp_path, capsys, arch, tmp_path / 'trunc.caffemodel'
  )
  assert 'reads a .caffemodel' in _errors(tmp_path, capsys, arch, tmp_path / 'x.pth')


def test_import_cli_prints_the_flags_and_refuses_to_overwrite(
  classifier, segmenter_layers, tmp_path, capsys, monkeypatch
):
  src = tmp_path / 'pascal_voc_epoch_10.pth'
  torch.save(am.training_checkpoint(classifier, epoch=10, global_counter=11 * 4), src)
  workdir = str(tmp_path / 'run')
  argv = ['cows-jax', 'weights', 'import', '--arch', 'coattention_vgg16', '--src', str(src)]
  monkeypatch.setattr('sys.argv', [*argv, '--out', workdir])
  with pytest.raises(SystemExit) as exit_:
    cli.run()
  assert exit_.value.code == 0
  out = capsys.readouterr().out
  assert f'-> {workdir}/classifier/44;' in out
  assert f'run localize on --workdir {workdir} with: --config.model.init_from=' in out
  assert '--config.localize.after_epochs=11' in out
  status = weights_import.main([*argv[2:], '--out', workdir])
  assert status == 1
  err = capsys.readouterr().err
  assert err == (
    f'cows-jax weights import: error: {workdir}/classifier exists; import into a new --out '
    'WORKDIR\n'
  )

  am.write_caffemodel(tmp_path / 'res_fov2a.caffemodel', segmenter_layers)
  args = [
    'import',
    '--arch',
    'deeplab_v2_resnet101',
    '--src',
    str(tmp_path / 'res_fov2a.caffemodel'),
  ]
  assert weights_import.main([*args, '--out', workdir]) == 0  # the same WORKDIR takes both.
  out = capsys.readouterr().out
  assert 'run evaluate, predict-split, export on --workdir' in out
  assert '--config.segment.head_channels=1024' in out


def test_a_config_of_another_model_is_an_error_not_a_corrupt_checkpoint(
  classifier, tmp_path, tiny_config
):
  """localize with a config whose model differs from the imported one (here 20 classes, the
  VOC default) names the difference and leaves the checkpoint in place."""
  src = str(tmp_path / 'c.pth')
  torch.save(am.training_checkpoint(classifier, epoch=0, global_counter=5), src)
  provenance = weights_import.import_trained('coattention_vgg16', src, str(tmp_path / 'run'))
  cfg = _classifier_config(tiny_config, provenance, **{'data.num_classes': 20})
  with pytest.raises(ValueError, match=r'classify checkpoint .*/5 holds another model'):
    _restore_classifier(cfg, str(tmp_path / 'run'))
  assert sorted(os.listdir(run_dir.RunDir(tmp_path / 'run').classifier())) == ['5', 'epochs.json']
