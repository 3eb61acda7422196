"""`cows-jax bench NAME`: the benchmarks, one module of cows_jax/bench/ each.

Our jitted code against the reference's procedure in JAX and, where torch is importable, the
PyTorch reference (cows_jax/tools/torch_reference.py), on random images and randomly
initialised networks; the input pipeline against the training step; the host's work against
the device's. common.py holds what they share: timing, FLOP counting, MFU, the tables.

Each measurement runs in a process of its own (common.isolated), so that its peak memory is
its own and one framework's threads do not compete with the other's. Besides the time, each row shows the
FLOPs of its procedure (XLA's cost analysis of the compiled programs; torch's FlopCounterMode
for the PyTorch rows), the FLOP/s achieved and the MFU against the device's peak
(`common.PEAK_TFLOPS`); `--json FILE` writes the same table as JSON.
"""

import argparse

from cows_jax.bench import (
  conv,
  device,
  evaluate,
  export,
  features,
  inference,
  inputs,
  localize,
  localize_memory,
  segment_step,
  train_step,
  tta,
)

# Each command's module: its `run(args)` measures and prints.
BENCHES = {
  'train-step': train_step,
  'segment-step': segment_step,
  'localize': localize,
  'features': features,
  'inference': inference,
  'input': inputs,
  'localize-memory': localize_memory,
  'export': export,
  'conv': conv,
  'test-time': tta,
  'evaluate': evaluate,
}


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='cows-jax bench', description=__doc__.split('\n')[0])
  sub = parser.add_subparsers(dest='what', required=True)
  for name, module in {**BENCHES, 'device': device}.items():
    module.add_arguments(sub.add_parser(name, help=module.HELP))
  return parser


def main(argv) -> int:
  args = build_parser().parse_args(argv)
  if args.what == 'device':
    return device.run(args)
  BENCHES[args.what].run(args)
  return 0
