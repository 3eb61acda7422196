"""The config schema: every field once, with its default, its allowed values and its meaning.

configs/defaults.py declares the fields (`c.classify.epochs = field(15, 'meaning', low=1)`)
in `Section`s; `Schema` holds them by dotted name and gives what the rest of the code reads:
the plain ml_collections.ConfigDict of the defaults (`defaults()`, which the configs start
from), the one-line problems of a config's plain choices and ranges (`problems`, which
validation.py reports and a stage called from Python raises through `require`), the renamed
fields' aliases (`move_renamed`, which config.finalize applies), and the text of
`cows-jax config --help-fields` and of the "All fields" section of docs/configs.md.
"""

import dataclasses
import os
import sys
from typing import Any

import ml_collections

# docs/configs.md's generated section lies between these lines.
DOCS_BEGIN, DOCS_END = '<!-- fields:begin -->', '<!-- fields:end -->'
DOCS_PATH = os.path.join('docs', 'configs.md')
WRITE_DOCS = 'python -m cows_jax.configs.defaults --write-docs'


@dataclasses.dataclass(frozen=True)
class Field:
  """One config field. A bound applies to each value of a tuple field (non-empty then)."""

  default: Any
  meaning: str
  low: float | None = None  # value >= low
  high: float | None = None  # value <= high
  above: float | None = None  # value > above
  choices: tuple | None = None
  renamed_to: str | None = None  # an old name, kept for one release: the field it moved to.

  def allowed(self) -> str:
    """The allowed values in words ('' when any value goes)."""
    if self.choices is not None:
      return 'one of ' + ', '.join(map(str, self.choices))
    lower = f'({self.above}' if self.above is not None else f'[{self.low}'
    if self.high is not None and (self.low is not None or self.above is not None):
      return f'in {lower}, {self.high}]'
    if self.high is not None:
      return f'<= {self.high}'
    if self.above is not None:
      return f'> {self.above}'
    return f'>= {self.low}' if self.low is not None else ''

  def problem(self, name: str, value) -> str | None:
    """One line when `value` is not allowed, else None."""
    if self.choices is not None:
      if value not in self.choices:
        return f'{name}={value!r}: expected one of {", ".join(map(str, self.choices))}'
      return None
    if self.low is None and self.high is None and self.above is None:
      return None
    values = value if isinstance(self.default, tuple) else (value,)
    ok = isinstance(values, (tuple, list)) and len(values) > 0
    for v in values if ok else ():
      if not isinstance(v, (int, float)) or isinstance(v, bool):
        return f'{name}={value!r}: expected a number'
      ok &= (self.low is None or v >= self.low) and (self.high is None or v <= self.high)
      ok &= self.above is None or v > self.above
    if ok:
      return None
    if isinstance(self.default, tuple):
      return f'{name}={tuple(value)!r}: expected values {self.allowed()}'
    return f'{name}={value!r}: expected a value {self.allowed()}'


def field(default, meaning: str, **kwargs) -> Field:
  """A field: its default, its one-line meaning, and `low`, `high`, `above` or `choices`."""
  return Field(default, meaning, **kwargs)


def renamed(new: str, default_meaning: str = '') -> Field:
  """The old name of a field that moved to `new`: None unless set; config.finalize moves a
  set value to `new` with a warning."""
  return Field(None, default_meaning or f'renamed to {new}', renamed_to=new)


class Section:
  """Fields and subsections set as attributes, kept in the order they are declared."""

  def __init__(self, meaning: str = ''):
    object.__setattr__(self, '_items', {})
    object.__setattr__(self, 'meaning', meaning)

  def __setattr__(self, name: str, value) -> None:
    if not isinstance(value, (Field, Section)):
      raise TypeError(f'{name}: a config field is declared with field(default, meaning)')
    if name in self._items:
      raise ValueError(f'{name}: declared twice')
    self._items[name] = value

  def __getattr__(self, name: str):
    try:
      return self._items[name]
    except KeyError:
      raise AttributeError(name) from None


def _get(cfg, name: str):
  node = cfg
  for part in name.split('.'):
    node = node[part]
  return node


class Schema:
  """The declared fields by dotted name (`fields`), the sections' meanings (`sections`)."""

  def __init__(self, root: Section):
    self.root = root
    self.fields: dict[str, Field] = {}
    self.sections: dict[str, str] = {'': root.meaning}
    self._walk(root, '')

  def _walk(self, section: Section, prefix: str) -> None:
    for name, item in section._items.items():
      if isinstance(item, Section):
        self.sections[prefix + name] = item.meaning
        self._walk(item, f'{prefix}{name}.')
      else:
        self.fields[prefix + name] = item

  @property
  def renamed(self) -> dict[str, str]:
    """{old name: new name} of the aliases kept for one release."""
    return {n: f.renamed_to for n, f in self.fields.items() if f.renamed_to}

  def defaults(self) -> ml_collections.ConfigDict:
    """A fresh ConfigDict of every field at its default."""

    def build(section: Section) -> ml_collections.ConfigDict:
      c = ml_collections.ConfigDict()
      for name, item in section._items.items():
        if isinstance(item, Section):
          c[name] = build(item)
        elif item.renamed_to:  # None, overridable with a value of the new field's type.
          kind = type(self.fields[item.renamed_to].default)
          c[name] = ml_collections.config_dict.placeholder(kind)
        else:
          c[name] = item.default
      return c

    return build(self.root)

  def problems(self, cfg, *prefixes: str) -> list[str]:
    """One line per field (under `prefixes`, or every one) outside its choices or range; a
    field the config lacks (a config made without paper_defaults) is not checked."""
    out = []
    for name, f in self.fields.items():
      if f.renamed_to or (prefixes and not name.startswith(prefixes)):
        continue
      try:
        value = _get(cfg, name)
      except (KeyError, AttributeError):
        continue
      if (problem := f.problem(name, value)) is not None:
        out.append(problem)
    return out

  def require(self, cfg, *prefixes: str) -> None:
    """Raises ValueError naming every problem of the fields under `prefixes` (for a stage
    called from Python, where the CLI's validation did not run)."""
    if problems := self.problems(cfg, *prefixes):
      raise ValueError('; '.join(problems))

  def move_renamed(self, cfg) -> list[str]:
    """Moves each set old name's value to its new field, in place; a warning line each."""
    out = []
    for old, new in self.renamed.items():
      *parents, leaf = old.split('.')
      node = _get(cfg, '.'.join(parents)) if parents else cfg
      if node.get(leaf) is None:
        continue
      *new_parents, new_leaf = new.split('.')
      (_get(cfg, '.'.join(new_parents)) if new_parents else cfg)[new_leaf] = node[leaf]
      node[leaf] = None
      out.append(
        f'config field {old} is renamed {new}: its value {_get(cfg, new)!r} is used as {new}; '
        f'the old name goes in the next release'
      )
    return out

  def text(self) -> str:
    """`cows-jax config --help-fields`: every field, its default, allowed values, meaning."""
    lines = []
    for name, f in self.fields.items():
      if f.renamed_to:
        continue
      allowed = f.allowed()
      lines.append(f'{name} = {f.default!r}' + (f'  ({allowed})' if allowed else ''))
      lines.append(f'    {f.meaning}')
    lines += ['', 'Renamed fields (the old name still works, with a warning, for one release):']
    lines += [f'  {old} -> {new}' for old, new in self.renamed.items()]
    return '\n'.join(lines)

  def markdown(self) -> str:
    """docs/configs.md's "All fields": a table per section, and the renamed fields."""
    cell = lambda s: str(s).replace('|', '\\|')
    lines = []
    by_section = {}
    for name, f in self.fields.items():
      if not f.renamed_to:
        by_section.setdefault(name.rpartition('.')[0], []).append((name, f))
    for section, items in by_section.items():
      lines += ['', f'### `{section or "(top level)"}`', '']
      if self.sections.get(section):
        lines += [self.sections[section], '']
      lines += ['| field | default | allowed | meaning |', '|---|---|---|---|']
      for name, f in items:
        allowed = cell(f.allowed())
        lines.append(f'| `{name}` | `{cell(repr(f.default))}` | {allowed} | {cell(f.meaning)} |')
    lines += ['', '### Renamed fields', '']
    lines += [
      'Each old name still works for one release: `config.finalize` moves a value set under '
      'it to the new field and logs a warning naming both.',
      '',
      '| old name | new name |',
      '|---|---|',
    ]
    lines += [f'| `{old}` | `{new}` |' for old, new in self.renamed.items()]
    return '\n'.join(lines[1:])

  def docs_section(self) -> str:
    return f'{DOCS_BEGIN}\n<!-- generated by `{WRITE_DOCS}` -->\n\n{self.markdown()}\n\n{DOCS_END}'


def replace_docs_section(text: str, section: str) -> str:
  """`text` with what lies between DOCS_BEGIN and DOCS_END (markers included) replaced."""
  start, end = text.index(DOCS_BEGIN), text.index(DOCS_END) + len(DOCS_END)
  return text[:start] + section + text[end:]


def main(schema: Schema, argv: list[str]) -> int:
  """`--write-docs`: rewrite docs/configs.md's generated section (run in the repository
  root); no argument: print the fields."""
  if argv[1:] == ['--write-docs']:
    with open(DOCS_PATH) as f:
      text = f.read()
    with open(DOCS_PATH, 'w') as f:
      f.write(replace_docs_section(text, schema.docs_section()))
    print(f'{DOCS_PATH}: the "All fields" section rewritten')
    return 0
  if argv[1:]:
    print(f'usage: {WRITE_DOCS}', file=sys.stderr)
    return 2
  print(schema.text())
  return 0
