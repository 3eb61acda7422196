"""The paper's batches on any device count: a batch padded to the devices with zero-weight
examples trains exactly as the unpadded batch on one device (losses and BatchNorm statistics
leave the padding out).

Tolerance: the runs are in float64 (jax_enable_x64, float64 inputs, variables, compute dtype
and gradient accumulator), so 1 and 8 devices differ only by float64 rounding of sums taken
in another order (the cross-device all-reduce, another CPU's vector width): about
eps64 * sqrt(n) ~ 2e-14 relative for the longest sums here (n ~ 1e4 terms of a kernel
gradient), measured up to 3e-14 after the steps. Each leaf must agree to RTOL = 1e-9 of its
largest magnitude: 4 orders above that. A padding example counted in a loss or a BatchNorm
statistic moves the results by ~1e-3 relative and fails it by 6 orders; even the loss
summed in float32 (differences of 1e-9 to 1e-7) fails it. In float32 the same runs differ
by up to 2e-4 absolute (8% on near-zero elements) with another CPU model or XLA's default
optimization level: no float32 bound both passes everywhere and sees the padding.
"""

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import functools
    import jax, jax.numpy as jnp, numpy as np, optax
    jax.config.update('jax_enable_x64', True)
    from cows_jax import classify, config, parallel, segment, training
    from cows_jax.models import from_config

    assert jax.device_count() == 8, jax.devices()
    rng = np.random.default_rng(0)
    RTOL = 1e-9  # float64 rounding grown by the steps; see the module docstring.

    def f64(tree):
      return jax.tree.map(lambda x: x.astype(np.float64) if x.dtype == np.float32 else x, tree)

    def pad(batch, devices):
      # As the input pipeline pads: copies of the first example, weight 0.
      n = len(next(iter(batch.values())))
      size = -(-n // devices) * devices
      out = {k: np.concatenate([v, np.repeat(v[:1], size - n, 0)]) for k, v in batch.items()}
      out['weight'] = (np.arange(size) < n).astype(np.float64)
      return out

    def run(step, state, batches, devices):
      mesh = parallel.data_mesh(jax.devices()[:devices])
      state = parallel.replicate(state, mesh)
      for b in batches:
        b = parallel.shard_batch(b if devices == 1 else pad(b, devices), mesh)
        state, m = step(state, b)
      return jax.device_get(state.variables), float(m['loss'])

    def same(a, b, start):
      # Each leaf to RTOL of its largest magnitude, or of the largest parameter update when
      # that is larger: a conv bias before a BatchNorm (which subtracts any constant) has a
      # zero gradient in exact arithmetic and holds only the rounding noise of the steps' sums
      # (~1e-17), which scales with the updates, not with the leaf.
      update = max(float(np.abs(y - s).max()) for y, s in
                   zip(jax.tree.leaves(b['params']), jax.tree.leaves(start['params']), strict=True))
      for (path, x), y in zip(jax.tree.leaves_with_path(a), jax.tree.leaves(b), strict=True):
        assert x.dtype == y.dtype == np.float64, (jax.tree_util.keystr(path), x.dtype, y.dtype)
        err, scale = float(np.abs(x - y).max()), max(float(np.abs(y).max()), update)
        assert err <= RTOL * scale, (jax.tree_util.keystr(path), err, scale)

    # The classifier: the paper's 5 pairs, BatchNorm in the backbone (the synthetic config).
    cfg = config.load('synthetic:tiny')
    cfg.input.size = 16
    cfg.model.width = 1 / 32  # float64 convolutions are slow on the CPU: narrow layers.
    model = from_config.classifier(cfg).clone(dtype=jnp.float64)
    variables = f64(from_config.init_variables(model, cfg, jax.random.key(0)))
    tx = classify.make_optimizer(cfg, variables['params'], 10)
    loss_fn = functools.partial(classify.loss_fn, model=model, weights=classify.loss_weights(cfg))
    step = jax.jit(functools.partial(training.train_step, loss_fn=loss_fn, tx=tx))
    batch = {'image_m': rng.normal(size=(5, 16, 16, 3)),
             'image_n': rng.normal(size=(5, 16, 16, 3)),
             'labels_m': (rng.random((5, 10)) < 0.3).astype(np.float64),
             'labels_n': (rng.random((5, 10)) < 0.3).astype(np.float64)}
    state = training.TrainState.create(variables, tx.init(variables['params']))
    contrastive = lambda s, b: step(s, b, jnp.asarray(True))
    (v1, l1), (v8, l8) = (run(contrastive, state, [batch] * 2, d) for d in (1, 8))
    assert abs(l1 - l8) <= RTOL * abs(l1), (l1, l8)
    same(v1, v8, variables)
    print('classifier OK', l1, l8)

    # The segmenter: 1 image x 10 accumulated micro-steps, on 1 and on 4 devices.
    cfg.segment.accumulation_steps, cfg.segment.batch_size, cfg.segment.crop_size = 10, 1, 16
    cfg.segment.base_lr = 0.1
    model = from_config.segmenter(cfg).clone(dtype=jnp.float64)
    variables = f64(from_config.init_variables(model, cfg, jax.random.key(1)))
    tx = segment.make_optimizer(cfg, variables['params'])
    # Its gradient accumulator in float64 too (MultiSteps keeps float32 by default).
    k = cfg.segment.accumulation_steps
    tx = optax.MultiSteps(tx.inner_opt, k, accumulator_dtype=jnp.float64)
    loss_fn = functools.partial(
      segment.loss_fn, model=model, ignore_index=255, align_corners=True
    )
    step = jax.jit(functools.partial(training.train_step, loss_fn=loss_fn, tx=tx))
    micro = [{'image': rng.normal(size=(1, 16, 16, 3)),
              'label': rng.integers(0, 11, (1, 16, 16)).astype(np.int32)} for _ in range(10)]
    state = training.TrainState.create(variables, tx.init(variables['params']))
    (v1, _), (v4, _) = (run(step, state, micro, d) for d in (1, 4))
    moved = max(float(np.abs(a - b).max()) for a, b in
                zip(jax.tree.leaves(v1['params']), jax.tree.leaves(variables['params'])))
    assert moved > 1e-3, moved
    same(v1, v4, variables)
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
