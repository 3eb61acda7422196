"""The key-value store of JAX's coordination service, which every process of a
`jax.distributed` job reaches: for agreements between processes that must not wait in a
device collective (a stop request, a barrier that a stop can interrupt).

JAX exposes the store only through its distributed client (`jax._src.distributed`); this
module is the one place that reaches into it.
"""

from jax._src import distributed


def _client():
  client = distributed.global_state.client
  if client is None:
    raise RuntimeError('the coordination service needs jax.distributed.initialize() first')
  return client


def set_value(key: str, value: str) -> None:
  _client().key_value_set(key, value, allow_overwrite=True)


def get_value(key: str) -> str | None:
  """The value under `key`, or None when no process has set it (does not wait)."""
  try:
    return _client().key_value_try_get(key)
  except Exception as e:  # jaxlib raises a bare XlaRuntimeError with NOT_FOUND for a missing key.
    if 'NOT_FOUND' in str(e):
      return None
    raise


def values_under(directory: str) -> dict[str, str]:
  """{key: value} of every key under `directory/`."""
  return dict(_client().key_value_dir_get(directory))
