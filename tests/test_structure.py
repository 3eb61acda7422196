"""The seams the stages rely on: stages never import each other, no module of cows_jax imports
itself back through others (no import circle) and none is over MAX_LINES lines, configs come by
name from the installed package, and a finalized config is the same from Python as from the
CLI."""

import ast
import os
import re
import subprocess
import sys

import pytest

from cows_jax import config
from cows_jax.imagenet_standin import backbones

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ('classify', 'localize', 'label', 'segment', 'evaluate', 'predict', 'ablate')
# The installed package: its directory in the repository for each package root.
PACKAGE_DIRS = {'cows_jax': 'cows_jax', 'cows_jax.configs': 'configs'}
MAX_LINES = 700


def _imported_modules(path: str) -> set[str]:
  """Every cows_jax module a file imports, as dotted names (`from cows_jax import x` -> x)."""
  tree = ast.parse(open(path).read())
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module:
      out.add(node.module)
      out |= {f'{node.module}.{a.name}' for a in node.names}
  return out


@pytest.mark.parametrize('stage', STAGES)
def test_no_stage_imports_another_stage(stage):
  imported = _imported_modules(os.path.join(ROOT, 'cows_jax', f'{stage}.py'))
  others = {f'cows_jax.{s}' for s in STAGES if s != stage}
  assert not imported & others, f'{stage}.py imports {sorted(imported & others)}'


def test_the_import_check_sees_a_stage_import(tmp_path):
  bad = tmp_path / 'bad.py'
  bad.write_text('from cows_jax import label, run_dir\nimport cows_jax.localize\n')
  assert {'cows_jax.label', 'cows_jax.localize'} <= _imported_modules(str(bad))


def test_packaged_config_by_name_equals_the_file():
  assert set(config.packaged_names()) == {
    'synthetic',
    'voc12',
    'voc12_single_label',
    'voc12_web',
    'lid20',
  }
  by_name = config.load('voc12:runlocal')
  assert by_name.data.max_per_split == 200
  path, _, arg = config.resolve('voc12:runlocal').partition(':')
  assert arg == 'runlocal' and os.path.samefile(path, os.path.join(ROOT, 'configs', 'voc12.py'))
  assert config.resolve('configs/voc12.py:runlocal') == 'configs/voc12.py:runlocal'


def _modules(root: str, package_dirs: dict) -> dict[str, str]:
  """{dotted module name: file} of every module of the packages (a package is its __init__)."""
  out = {}
  for package, directory in package_dirs.items():
    top = os.path.join(root, directory)
    for folder, dirs, files in os.walk(top):
      dirs[:] = sorted(d for d in dirs if d != '__pycache__')
      rel = os.path.relpath(folder, top)
      prefix = package if rel == '.' else f'{package}.{rel.replace(os.sep, ".")}'
      for name in files:
        if name.endswith('.py'):
          out[prefix if name == '__init__.py' else f'{prefix}.{name[:-3]}'] = os.path.join(
            folder, name
          )
  return out


def import_graph(root: str = ROOT, package_dirs: dict = PACKAGE_DIRS) -> dict[str, set[str]]:
  """{module: the modules of the packages it imports}, imports inside functions included:
  `import a.b`, `from a import b` (b a module: a.b, else a), relative imports resolved."""
  modules = _modules(root, package_dirs)

  def known(name: str) -> str | None:  # the module itself, or the one that defines `name`.
    while name and name not in modules:
      name = name.rpartition('.')[0]
    return name or None

  graph = {}
  for module, path in modules.items():
    is_package = path.endswith('__init__.py')
    edges = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
      if isinstance(node, ast.Import):
        edges |= {known(a.name) for a in node.names}
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ''
        if node.level:
          parts = module.split('.')
          parent = parts[: len(parts) - node.level + is_package]
          base = '.'.join(parent + ([base] if base else []))
        for alias in node.names:
          edges.add(
            known(f'{base}.{alias.name}') if f'{base}.{alias.name}' in modules else known(base)
          )
    graph[module] = edges - {None, module}
  return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """An import circle [a, b, ..., a], or None."""
  state, stack = {}, []

  def visit(node):
    state[node] = 'open'
    stack.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == 'open':
        return stack[stack.index(nxt) :] + [nxt]
      if nxt not in state and (cycle := visit(nxt)):
        return cycle
    state[node] = 'done'
    stack.pop()
    return None

  for node in sorted(graph):
    if node not in state and (cycle := visit(node)):
      return cycle
  return None


def test_no_import_circle():
  graph = import_graph()
  assert {'cows_jax.cli', 'cows_jax.bench.main', 'cows_jax.configs.defaults'} <= set(graph)
  assert 'cows_jax.bench.main' in graph['cows_jax.cli']  # an import inside a function.
  cycle = find_cycle(graph)
  assert cycle is None, 'import circle: ' + ' -> '.join(cycle)


def test_the_import_graph_sees_a_circle(tmp_path):
  pkg = tmp_path / 'pkg'
  (pkg / 'sub').mkdir(parents=True)
  (pkg / '__init__.py').write_text('')
  (pkg / 'sub' / '__init__.py').write_text('')
  (pkg / 'a.py').write_text('from pkg.sub import b\n')
  (pkg / 'sub' / 'b.py').write_text('def f():\n  from . import c\n')
  (pkg / 'sub' / 'c.py').write_text('import pkg.a\nfrom pkg import sub\n')
  graph = import_graph(str(tmp_path), {'pkg': 'pkg'})
  assert graph['pkg.sub.b'] == {'pkg.sub.c'} and graph['pkg.sub.c'] == {'pkg.a', 'pkg.sub'}
  assert find_cycle(graph) == ['pkg.a', 'pkg.sub.b', 'pkg.sub.c', 'pkg.a']
  (pkg / 'sub' / 'c.py').write_text('import numpy\n')
  assert find_cycle(import_graph(str(tmp_path), {'pkg': 'pkg'})) is None


def test_no_module_is_over_max_lines():
  too_long = {
    name: n
    for name, path in _modules(ROOT, PACKAGE_DIRS).items()
    if (n := len(open(path).read().splitlines())) > MAX_LINES
  }
  assert not too_long, f'modules over {MAX_LINES} lines: {too_long}'


@pytest.mark.parametrize('spec', ['synthetic:runlocal', 'synthetic:tny', 'voc12:fast'])
def test_unknown_config_argument_is_an_error(spec):
  name, _, arg = spec.partition(':')
  with pytest.raises(ValueError, match=f"configs/{name}.py: unknown config argument '{arg}'"):
    config.load(spec)


def test_finalized_config_is_read_only_and_idempotent(tiny_config):
  cfg = config.finalize(tiny_config)
  with pytest.raises((AttributeError, TypeError, ValueError)):
    cfg.classify.epochs = 3
  assert config.finalize(cfg).to_dict() == cfg.to_dict() == tiny_config.to_dict()


def test_config_command_prints_the_resolved_config_by_name():
  cmd = [os.path.join(os.path.dirname(sys.executable), 'cows-jax'), 'config']
  args = ['--config', 'synthetic:tiny', '--config.classify.epochs=5']
  done = subprocess.run(cmd + args, cwd='/', capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr
  assert 'epochs: 5' in done.stdout and 'train_size: 32' in done.stdout


def test_help_lists_every_command_and_each_command_its_flags():
  exe = os.path.join(os.path.dirname(sys.executable), 'cows-jax')
  done = subprocess.run([exe, '--help'], capture_output=True, text=True, timeout=120)
  assert done.returncode == 0
  for command in (
    'classify',
    'pipeline',
    'ablate',
    'predict-split',
    'config',
    'data check',
    'summary',
    'weights import',
    'bench',
  ):
    assert f'  {command} ' in done.stdout, command
  done = subprocess.run(
    [exe, 'predict-split', '--help'], capture_output=True, text=True, timeout=120
  )
  assert done.returncode == 0
  assert '--split:' in done.stdout and '--workdir:' in done.stdout
  done = subprocess.run([exe, 'clasify'], capture_output=True, text=True, timeout=120)
  assert done.returncode != 0 and "unknown command 'clasify'" in done.stderr


def test_no_shipped_file_holds_an_absolute_path():
  """The package's artifacts (the shipped stand-in backbones) travel to other machines: their
  text names paths relative to the artifact, or none."""
  root = os.path.join(ROOT, 'cows_jax')
  assert os.path.commonpath([root, backbones.SHIPPED_ROOT]) == root
  absolute = re.compile(rb'(?<![\w.])/(tmp|home|root|work|mnt|usr|var|opt|Users)/')
  found, checked = [], 0
  for base, _, files in os.walk(backbones.SHIPPED_ROOT):
    for name in files:
      checked += 1
      with open(os.path.join(base, name), 'rb') as f:
        if absolute.search(f.read()):
          found.append(os.path.relpath(os.path.join(base, name), root))
  assert checked and not found, found
