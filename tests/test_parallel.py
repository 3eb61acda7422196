"""The paper's batches on any device count: a batch padded to the devices with zero-weight
examples trains exactly as the unpadded batch on one device (losses and BatchNorm statistics
leave the padding out)."""

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import functools
    import jax, jax.numpy as jnp, numpy as np, optax
    from cows_jax import classify, config, parallel, segment, training
    from cows_jax.models import from_config

    assert jax.device_count() == 8, jax.devices()
    rng = np.random.default_rng(0)

    def pad(batch, devices):
      # As the input pipeline pads: copies of the first example, weight 0.
      n = len(next(iter(batch.values())))
      size = -(-n // devices) * devices
      out = {k: np.concatenate([v, np.repeat(v[:1], size - n, 0)]) for k, v in batch.items()}
      out['weight'] = (np.arange(size) < n).astype(np.float32)
      return out

    def run(step, state, batches, devices):
      mesh = parallel.data_mesh(jax.devices()[:devices])
      state = parallel.replicate(state, mesh)
      for b in batches:
        b = parallel.shard_batch(b if devices == 1 else pad(b, devices), mesh)
        state, m = step(state, b)
      return jax.device_get(state.variables), float(m['loss'])

    def same(a, b, rtol):
      for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=1e-6)  # float sums in another order.

    # The classifier: the paper's 5 pairs, BatchNorm in the backbone (the synthetic config).
    cfg = config.load('synthetic:tiny')
    cfg.input.size = 32
    model = from_config.classifier(cfg)
    variables = from_config.init_variables(model, cfg, jax.random.key(0))
    tx = classify.make_optimizer(cfg, variables['params'], 10)
    loss_fn = functools.partial(classify.loss_fn, model=model, weights=classify.loss_weights(cfg))
    step = jax.jit(functools.partial(training.train_step, loss_fn=loss_fn, tx=tx))
    batch = {'image_m': rng.normal(size=(5, 32, 32, 3)).astype(np.float32),
             'image_n': rng.normal(size=(5, 32, 32, 3)).astype(np.float32),
             'labels_m': (rng.random((5, 10)) < 0.3).astype(np.float32),
             'labels_n': (rng.random((5, 10)) < 0.3).astype(np.float32)}
    state = training.TrainState.create(variables, tx.init(variables['params']))
    contrastive = lambda s, b: step(s, b, jnp.asarray(True))
    (v1, l1), (v8, l8) = (run(contrastive, state, [batch] * 2, d) for d in (1, 8))
    np.testing.assert_allclose(l1, l8, rtol=1e-5)
    same(v1, v8, 1e-5)
    print('classifier OK', l1, l8)

    # The segmenter: 1 image x 10 accumulated micro-steps, on 1 and on 4 devices.
    cfg.segment.accumulation_steps, cfg.segment.batch_size, cfg.segment.crop_size = 10, 1, 24
    cfg.segment.base_lr = 0.1
    model = from_config.segmenter(cfg)
    variables = from_config.init_variables(model, cfg, jax.random.key(1))
    tx = segment.make_optimizer(cfg, variables['params'])
    loss_fn = functools.partial(
      segment.loss_fn, model=model, ignore_index=255, align_corners=True
    )
    step = jax.jit(functools.partial(training.train_step, loss_fn=loss_fn, tx=tx))
    micro = [{'image': rng.normal(size=(1, 24, 24, 3)).astype(np.float32),
              'label': rng.integers(0, 11, (1, 24, 24)).astype(np.int32)} for _ in range(10)]
    state = training.TrainState.create(variables, tx.init(variables['params']))
    (v1, _), (v4, _) = (run(step, state, micro, d) for d in (1, 4))
    moved = max(float(np.abs(a - b).max()) for a, b in
                zip(jax.tree.leaves(v1['params']), jax.tree.leaves(variables['params'])))
    assert moved > 1e-3, moved
    same(v1, v4, 1e-5)
    print('segmenter OK')
""")


def test_paper_batches_padded_over_8_and_4_devices_equal_one_device():
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  flags = f'{os.environ.get("XLA_FLAGS", "")} --xla_force_host_platform_device_count=8'
  env = dict(os.environ, XLA_FLAGS=flags.strip(), JAX_PLATFORMS='cpu')
  out = subprocess.run(
    [sys.executable, '-c', SCRIPT], cwd=root, env=env, capture_output=True, text=True, timeout=600
  )
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
  assert 'classifier OK' in out.stdout and 'segmenter OK' in out.stdout
