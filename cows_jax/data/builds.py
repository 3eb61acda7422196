"""Preparing a TFDS build once, also when several processes share its data_dir; the builder
of the synthetic datasets' splits (synthetic.py, imagenet_standin/dataset.py)."""

import abc
import dataclasses
import os
from collections.abc import Callable

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from cows_jax import parallel, run_dir


def prepared(make_builder, what: str):
  """A builder over a complete build of `make_builder()`: an existing one is reused, else it
  is built (TFDS writes into `incomplete.*` and renames it when done, so an interrupted build
  is never taken for a complete one). With several processes, process 0 builds first
  (parallel.process_zero_first). The builder returned is made after the build, so its info
  is the finished build's, whichever process wrote it. `what` names the build in the log and
  the barrier."""

  def build_here() -> None:
    builder = make_builder()
    if not builder.is_prepared():
      with one_build_at_a_time(builder.data_dir, what):
        builder = make_builder()  # another job may have built it while this one waited.
        if not builder.is_prepared():
          logging.info('Building %s at %s', what, builder.data_dir)
          builder.download_and_prepare()
          logging.info('Built %s at %s', what, builder.data_dir)
          return
    logging.info('Reusing %s at %s', what, builder.data_dir)

  parallel.process_zero_first(build_here, what)
  return make_builder()


def one_build_at_a_time(build_dir, what: str):
  """An exclusive lock on `<build_dir>.build.lock` while a build is made: separate jobs on one
  machine that share a data_dir (`ablate --seeds` side by side) build it once, the later ones
  waiting and then reusing it. TFDS alone would build it in each and fail the later renames."""
  return run_dir.exclusive(f'{os.fspath(build_dir)}.build.lock', f'building {what}')


# ----------------------------------------------------------------------------- spec builds


@dataclasses.dataclass(eq=False)
class SpecConfig(tfds.core.BuilderConfig):
  """Builder config carrying a synthetic dataset's spec and the splits to build; it travels
  with the builder when pickled (grain workers). Its name is the build's fingerprint."""

  spec: object = None
  splits: tuple[str, ...] = ()


class SpecBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """TFDS builder of some splits of a synthetic dataset's spec (a `split_size(split)` method):
  record i of a split is its example i, with 'id' '<split>_<i:06d>'. A subclass (its name
  names the build's directory) gives DESCRIPTION, which the info follows with the spec, and
  the features and records less 'id'."""

  VERSION = tfds.core.Version('1.0.0')
  DESCRIPTION = ''

  @property
  def spec(self):
    return self.builder_config.spec

  @abc.abstractmethod
  def features(self) -> dict:
    """{name: tfds feature} of a record, 'id' left out."""

  @abc.abstractmethod
  def record(self, split: str, index: int) -> dict:
    """The stored fields of example `index` of `split`, 'id' left out."""

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=f'{self.DESCRIPTION}, {self.spec}',
      features=tfds.features.FeaturesDict(
        {**self.features(), 'id': tfds.features.Tensor(shape=(), dtype=np.object_)}
      ),
      disable_shuffling=True,  # record i is example i, so sources match generate_example
    )

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(split) for split in self.builder_config.splits}

  def _generate_examples(self, split: str):
    for index in range(self.spec.split_size(split)):
      yield index, {**self.record(split, index), 'id': f'{split}_{index:06d}'.encode()}


def prepared_spec(
  builder_cls: type[SpecBuilder],
  spec,
  splits: tuple[str, ...],
  data_dir: str,
  fingerprint: str,
  what: str,
) -> SpecBuilder:
  """`prepared` for `splits` of `spec`: the build in `data_dir` named `fingerprint` (the
  config name), `what` in the log."""
  config = SpecConfig(name=fingerprint, description=repr(spec), spec=spec, splits=tuple(splits))
  return prepared(
    lambda: builder_cls(config=config, data_dir=data_dir, file_format='array_record'), what
  )


def split_sources(builder: SpecBuilder, source: Callable) -> dict:
  """{split: source(its random-access data source, the build directory)} for the builder's
  splits."""
  sources = builder.as_data_source()
  return {
    split: source(sources[split], str(builder.data_dir)) for split in builder.builder_config.splits
  }
