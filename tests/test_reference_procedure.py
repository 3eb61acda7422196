"""Stage 2 against the authors' procedure written out independently of cows_jax's helpers:
the checkpoint they call 'epoch_10', views made by PIL from the original image, a full PyTorch
pair forward per pairing, the maps truncated to uint8 and resized by OpenCV, and the pseudo-label
rules in plain numpy. cows_jax's `localize` and `label` stages run on the same run directory
and must give the same maps and labels (items 1-3 of the fidelity audit would each break it)."""

import numpy as np
import pytest
from PIL import Image

from cows_jax import checkpoints, config, label, localize, run_dir
from cows_jax.data import sources
from cows_jax.data.pairs import ClassIndex
from cows_jax.models import from_config
from cows_jax.models.random_init import classifier_params

torch = pytest.importorskip('torch', reason='the reference procedure needs torch')
cv2 = pytest.importorskip('cv2', reason='the reference maps are resized by OpenCV')
from cows_jax.tools import torch_reference as ref  # noqa: E402  (needs torch)

torch.set_num_threads(1)
SIZE = 32  # input size; the synthetic originals are 48 px, so views from them differ.
EPOCHS, STEPS_PER_EPOCH = 12, 1


def _reference_view(image: np.ndarray, side: int, mean, std, flip=False) -> torch.Tensor:
  """transforms.Resize((side, side)) (PIL bilinear), ToTensor, Normalize, and the flip."""
  x = np.asarray(Image.fromarray(image).resize((side, side), Image.BILINEAR), np.float32) / 255
  x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
  x = x[:, ::-1] if flip else x
  return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]


def _reference_label(maps, classes, saliency, rules) -> np.ndarray:
  """The reference's pseudo-label rules (paper.md, Stage 2) on uint8 maps read back."""
  a = maps.astype(np.float64)
  lo, hi = a.min(axis=(1, 2), keepdims=True), a.max(axis=(1, 2), keepdims=True)
  a = np.where(hi > lo, (a - lo) / np.where(hi > lo, hi - lo, 1), 0)
  s = saliency.astype(np.float64)
  scores = np.concatenate([(1 - s / 255)[None], a])
  scores[scores < rules.score_threshold] = 0
  out = np.concatenate([[0], np.asarray(classes) + 1])[scores.argmax(0)].astype(np.uint8)
  out[(scores > rules.conflict_threshold).sum(0) > 1] = 255
  hint = np.maximum(s, 255.0 * (a > rules.fg_confident).any(0))
  out[(out == 0) & (hint >= rules.bg_saliency_ignore)] = 255
  if ((out != 0) & (out != 255)).sum() < rules.min_fg_fraction * out.size:
    out[:] = 255
  return out


def test_maps_and_pseudo_labels_follow_the_reference(tiny_config, tmp_path):
  cfg = tiny_config
  cfg.data.train_size = 6
  cfg.input.size = SIZE
  cfg.model.norm = 'none'  # the paper's VGG16, as the reference's.
  cfg.classify.epochs = EPOCHS
  cfg.classify.lr_decay_epochs = ()
  cfg.localize.after_epochs = 11
  cfg.localize.num_related = 2
  cfg = config.finalize(cfg)
  workdir = str(tmp_path / 'run')
  run = run_dir.RunDir(workdir)
  model = from_config.classifier(cfg)

  # The classifier's state after 10 and after 11 epochs; the reference's 'epoch_10' file is
  # the latter (saved with the 0-based epoch index).
  params = {epochs: classifier_params(model, SIZE, seed=epochs) for epochs in (10, 11)}
  run_dir.write_classifier_epochs(run, STEPS_PER_EPOCH, EPOCHS)
  mngr = checkpoints.manager(run.classifier())
  for epochs, p in params.items():
    checkpoints.save(mngr, epochs * STEPS_PER_EPOCH, {'params': p}, {'step': np.int32(0)})
  mngr.wait_until_finished()
  mngr.close()

  localize.run(cfg, workdir)
  label.run(cfg, workdir)

  torch_model = ref.CoAttentionClassifier(cfg.data.num_classes, cfg.model.width)
  ref.load_flax_params(torch_model, params[11])
  torch_model.eval()
  train = sources.load(cfg)['train']
  index = ClassIndex(sources.all_labels(train))
  mean, std = cfg.input.mean, cfg.input.std
  views = ((True, SIZE, 'flip'), (False, 24, 0.75), (False, 64, 2.0))
  rules = label.rules(cfg)
  for i in range(len(train)):
    image = train[i]['image']
    classes = index.classes_of(i)
    x_m = _reference_view(image, SIZE, mean, std)
    view_images = [(v, _reference_view(image, side, mean, std, flip)) for flip, side, v in views]
    # The related images: the same draws as cows_jax's (the sampling is not under test).
    partners = [
      torch.cat(
        [
          _reference_view(train[n]['image'], SIZE, mean, std)
          for n in localize.related_images(index, i, int(c), cfg)
        ]
      )
      for c in classes
    ]
    small = ref.localization_maps(
      torch_model, x_m, classes, partners, view_images, cfg.localize.gate
    )
    h, w = image.shape[:2]
    want = np.stack(
      [cv2.resize(m.astype(np.uint8), (w, h), interpolation=cv2.INTER_CUBIC) for m in small]
    )
    ids = run_dir.read_json(run.maps_index(), 'localize')['ids']
    got, got_classes = run_dir.load_maps(run.map_file(ids[i]))
    np.testing.assert_array_equal(got_classes, classes)
    # uint8 levels: float noise next to an integer, and OpenCV's rounding, move a few by one.
    diff = np.abs(got - want.astype(np.float32))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.02, (i, diff.max(), (diff > 0).mean())

    want_label = _reference_label(want, classes, train[i]['saliency'], rules)
    got_label = run_dir.read_label_png(run.label_file(ids[i]))
    assert (got_label == want_label).mean() > 0.99
