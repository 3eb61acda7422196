"""The train step sharded over 8 (forced CPU) devices equals the 1-device step."""

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import functools
    import jax, jax.numpy as jnp, numpy as np
    from cows_jax import classify, config, parallel, training
    from cows_jax.models import from_config

    assert jax.device_count() == 8, jax.devices()
    cfg = config.load('synthetic:tiny')
    cfg.input.size = 32
    model = from_config.classifier(cfg)
    params = from_config.init_variables(model, cfg, jax.random.key(0))
    tx = classify.make_optimizer(cfg, params['params'], 10)
    rng = np.random.default_rng(0)
    batch = {'image_m': rng.normal(size=(8, 32, 32, 3)).astype(np.float32),
             'image_n': rng.normal(size=(8, 32, 32, 3)).astype(np.float32),
             'labels_m': (rng.random((8, 10)) < 0.3).astype(np.float32),
             'labels_n': (rng.random((8, 10)) < 0.3).astype(np.float32)}
    loss_fn = functools.partial(classify.loss_fn, model=model, weights=classify.loss_weights(cfg))
    step = jax.jit(functools.partial(training.train_step, loss_fn=loss_fn, tx=tx))
    outs = []
    for devices in (jax.devices()[:1], jax.devices()):
      mesh = parallel.data_mesh(devices)
      state = parallel.replicate(training.TrainState.create(params, tx.init(params['params'])), mesh)
      b = parallel.shard_batch(batch, mesh)
      assert len(b['image_m'].sharding.device_set) == len(devices)
      for _ in range(2):
        state, m = step(state, b, jnp.asarray(True))
      outs.append((jax.device_get(state.variables), float(m['loss'])))
    (p1, l1), (p8, l8) = outs
    np.testing.assert_allclose(l1, l8, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8)):
      np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)
    print('OK', l1, l8)
""")


def test_eight_device_step_equals_one_device_step():
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  flags = f'{os.environ.get("XLA_FLAGS", "")} --xla_force_host_platform_device_count=8'
  env = dict(os.environ, XLA_FLAGS=flags.strip(), JAX_PLATFORMS='cpu')
  out = subprocess.run(
    [sys.executable, '-c', SCRIPT], cwd=root, env=env, capture_output=True, text=True, timeout=300
  )
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
  assert 'OK' in out.stdout
