"""Preparing a TFDS build once, also when several processes share its data_dir."""

from absl import logging

from cows_jax import parallel


def prepared(make_builder, what: str):
  """A builder over a complete build of `make_builder()`: an existing one is reused, else it
  is built (TFDS writes into `incomplete.*` and renames it when done, so an interrupted build
  is never taken for a complete one). With several processes, process 0 builds first
  (parallel.process_zero_first). The builder returned is made after the build, so its info
  is the finished build's, whichever process wrote it. `what` names the build in the log and
  the barrier."""

  def build_here() -> None:
    builder = make_builder()
    if builder.is_prepared():
      logging.info('Reusing %s at %s', what, builder.data_dir)
    else:
      logging.info('Building %s at %s', what, builder.data_dir)
      builder.download_and_prepare()
      logging.info('Built %s at %s', what, builder.data_dir)

  parallel.process_zero_first(build_here, what)
  return make_builder()
