"""``--set KEY=VALUE``: command-line overrides of a spec's train, algorithm and group sections.

An override edits the syntax tree before the sections are typed, so a value given on the
command line meets the same checks and diagnostics as one written in the spec::

    train.epochs=3                            train { epochs = 3 }
    train.optimizer.learning_rate=0.05        train { optimizer = sgd(learning_rate = 0.05, ...) }
    algorithm.my-algo.greedy=true             algorithm my-algo { greedy = true }
    algorithm.lg-fg-a.estimator.tangents=4    a copy of the preset with tangents = 4
    group.heads.lr_scale=0.5                  the default `heads` group, lr × 0.5

VALUE is any .fg value (``0.05``, ``true``, ``mnist``, ``"data/x.npz"``,
``adam(learning_rate = 0.001)``). A nested key (``optimizer.learning_rate``) sets one keyword
argument of a call, starting from the spec's call or else the default one. Presets
(``grammar/algorithms.fg``) and the default parameter groups (``backbone``, ``heads``,
``readout``) are overridden by typing an edited copy of them with the same functions.

Overrides are appended to the spec's source as comments (``# --set KEY=VALUE``): a diagnostic
about an override shows that line with a caret, located as ``--set KEY=VALUE``, and a run's
spec hash changes with its overrides (so ``--resume`` refuses other ones).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from fgc.errors import Diagnostic, Span, SpecError
from fgc.front import syntax as S
from fgc.graph.build import Diags, suggest

from fgc.front.train_section import TRAIN_KEYS  # noqa: E402  (one list of train settings)
ALGORITHM_KEYS = ("target", "greedy", "estimator")
GROUP_KEYS = ("params", "lr_scale", "weight_decay", "estimator", "optimizer")
CALL_KEYS = ("optimizer", "schedule", "estimator", "augment")  # settings whose value takes KEY.ARG
SECTIONS = ("train", "algorithm", "group")
FORMS = "train.KEY=VALUE, algorithm.NAME.KEY=VALUE, group.NAME.KEY=VALUE or const.NAME=VALUE"
PREFIX = "# --set "


@dataclass(frozen=True)
class SetSpan(Span):
    """A span inside one ``--set`` argument; it prints as the argument itself."""

    flag: str = ""

    def __str__(self) -> str:
        return f"--set {self.flag}"


@dataclass(frozen=True)
class Override:
    """One parsed ``--set KEY=VALUE``."""

    keys: tuple[str, ...]  # ("train", "optimizer", "learning_rate")
    value: S.Value
    span: SetSpan  # the whole KEY=VALUE
    key_span: SetSpan  # the last key


def load(path: str | Path, sets: list[str] | tuple[str, ...] = ()):
    """Reads and checks a spec with overrides applied; a :class:`~fgc.plan.program.Program`.

    Raises:
      SpecError: a malformed override, an unknown key (with the valid ones and a near
        spelling) or a value the section rejects, located at its ``--set``.
    """
    from fgc.front.parse import parse_file
    return apply(parse_file(path), sets)


def apply(spec: S.SpecFile, sets: list[str] | tuple[str, ...]):
    """Applies ``KEY=VALUE`` overrides to a parsed spec and checks it; a Program."""
    from fgc.plan.program import from_syntax
    if not sets:
        return from_syntax(spec)
    lines = spec.source.rstrip("\n").count("\n") + 1
    source = spec.source.rstrip("\n") + "\n" + "".join(f"{PREFIX}{s}\n" for s in sets)
    d = Diags()
    overrides = [o for i, s in enumerate(sets) if (o := _parse(s, lines + 1 + i, d)) is not None]
    _fail(d, source)
    later = []  # presets and default groups: edited once the spec is typed
    items = list(spec.items)
    for o in overrides:
        if not _edit_spec(items, o, d):
            later.append(o)
    _fail(d, source)
    prog = from_syntax(S.SpecFile(tuple(items), spec.path, source))
    for o in later:
        _edit_program(prog, o, d)
    _fail(d, source)
    return prog


def _fail(d: Diags, source: str) -> None:
    if d:
        raise SpecError(sorted(d.items, key=lambda x: (x.span.line, x.span.column)
                               if x.span else (0, 0)), source)


# --- KEY=VALUE ---------------------------------------------------------------------------

def _parse(text: str, line: int, d: Diags) -> Override | None:
    """``KEY=VALUE`` on ``line`` of the combined source (columns count from ``# --set ``)."""
    from fgc.front.parse import parse
    off = len(PREFIX)

    def span(start: int, end: int) -> SetSpan:
        return SetSpan("--set", line, off + start + 1, line, off + max(end, start + 1) + 1,
                       flag=text)

    key, eq, value = text.partition("=")
    whole = span(0, len(text))
    if not eq or not key.strip() or not value.strip():
        d.add("E002", "not KEY=VALUE", whole,
              f"write {FORMS}, e.g. --set train.epochs=3")
        return None
    keys = tuple(k.strip() for k in key.split("."))
    if any(not k for k in keys):
        d.add("E002", "empty key", span(0, len(key)), f"write {FORMS}")
        return None
    last = len(key) - len(keys[-1])
    key_span = span(last, len(key))
    # Parse VALUE as the value of a setting, placed so that its columns are the argument's.
    pad = " " * (off + len(key) + 1)
    try:
        parsed = parse(f"train {{ x =\n{pad}{value}\n}}", "--set")
    except SpecError as e:
        diag = e.diagnostics[0]
        col = diag.span.column if diag.span and diag.span.line == 2 else off + len(text) + 1
        d.add(diag.code, "unexpected end of the value" if diag.span and diag.span.line > 2 else diag.message, SetSpan("--set", line, col, line,
                                                                    col + 1, flag=text), diag.hint)
        return None
    secs = parsed.of(S.Section)
    if len(parsed.items) != 1 or len(secs[0].settings) != 1:
        d.add("E002", "VALUE must be one value", span(len(key) + 1, len(text)),
              "quote a string: --set 'train.dataset=\"data/x.npz\"'")
        return None
    return Override(keys, _respan(secs[0].settings[0].value, line, text), whole, key_span)


def _respan(node, line: int, flag: str):
    """The value with its spans moved from the scratch parse onto the override's line."""
    if isinstance(node, tuple):
        return tuple(_respan(x, line, flag) for x in node)
    if not hasattr(node, "__dataclass_fields__"):
        return node
    changes = {}
    for name in node.__dataclass_fields__:
        v = getattr(node, name)
        if isinstance(v, Span):
            changes[name] = SetSpan("--set", line, v.column, line, v.end_column, flag=flag)
        elif isinstance(v, tuple) or hasattr(v, "__dataclass_fields__"):
            changes[name] = _respan(v, line, flag)
    return replace(node, **changes)


# --- editing the syntax tree ------------------------------------------------------------

def _edit_spec(items: list, o: Override, d: Diags) -> bool:
    """Applies an override to the spec's own sections; False when it targets a preset or a
    default group (or was reported)."""
    head = o.keys[0]
    if head == "const":
        return _edit_const(items, o, d)
    if head not in SECTIONS:
        d.add("E203", f"unknown section `{head}`", o.span,
              " ".join(filter(None, (suggest(head, SECTIONS), f"keys are {FORMS}"))))
        return True
    if head == "train":
        rest, name, allowed = o.keys[1:], None, TRAIN_KEYS
    elif len(o.keys) < 3:
        d.add("E204", f"{'an' if head == 'algorithm' else 'a'} {head} key is {head}.NAME.KEY", o.span,
              f"e.g. --set {'algorithm.lg-fg-a.greedy=true' if head == 'algorithm' else 'group.heads.lr_scale=0.5'}")
        return True
    else:
        name, rest = o.keys[1], o.keys[2:]
        allowed = ALGORITHM_KEYS if head == "algorithm" else GROUP_KEYS
    if not rest:
        d.add("E204", f"which train setting?", o.span,
              f"train settings: {', '.join(TRAIN_KEYS)}")
        return True
    if not _check_key(o, head, rest, allowed, d):
        return True
    idx = next((i for i, it in enumerate(items) if isinstance(it, S.Section) and it.kind == head
                and (head == "train" or it.name == name)), None)
    if idx is None and head != "train":
        return False  # a preset or a default group, or unknown: decided once typed
    sec = items[idx] if idx is not None else S.Section("train", None, (), o.span)
    new = _set_in_section(sec, rest, o, d, _default_call(head, rest[0]))
    if new is not None:
        if idx is None:
            items.append(new)
        else:
            items[idx] = new
    return True


def _edit_const(items: list, o: Override, d: Diags) -> bool:
    """``const.NAME=VALUE`` replaces the value of the spec's ``const NAME`` (a width, or
    the head a loss picks: ``--set const.AUX=mlp_aux``)."""
    consts = [i for i, it in enumerate(items) if isinstance(it, S.ConstDecl)]
    if len(o.keys) != 2:
        d.add("E204", "a constant's key is const.NAME", o.span, "e.g. --set const.AUX=mlp_aux")
        return True
    idx = next((i for i in consts if items[i].name == o.keys[1]), None)
    if idx is None:
        names = [items[i].name for i in consts]
        d.add("E201", f"the spec has no constant `{o.keys[1]}`", o.key_span,
              suggest(o.keys[1], names) or f"constants: {', '.join(names) or 'none'}")
        return True
    items[idx] = replace(items[idx], value=o.value, span=o.span)
    return True


def _check_key(o: Override, head: str, rest: tuple[str, ...], allowed: tuple, d: Diags) -> bool:
    key = rest[0]
    what = "train" if head == "train" else head
    if key not in allowed:
        near = suggest(key, allowed)
        d.add("E203", f"unknown {what} setting `{key}`", o.key_span,
              (f"{near} " if near else "") + f"{what} settings: {', '.join(allowed)}")
        return False
    if len(rest) > 1 and key not in CALL_KEYS or len(rest) > 2:
        d.add("E203", f"`{key}` has no argument "
              f"`{'.'.join(rest[1:])}`", o.key_span,
              f"only {', '.join(k for k in CALL_KEYS if k in allowed)} take KEY.ARGUMENT")
        return False
    return True


def _set_in_section(sec: S.Section, rest: tuple[str, ...], o: Override, d: Diags,
                    default: S.Value | None) -> S.Section | None:
    old = sec.get(rest[0])
    if len(rest) == 1:
        value = o.value
    else:
        base = old if old is not None else default
        if isinstance(base, S.Name) and rest[0] != "estimator":  # `sgd` is `sgd()`
            base = S.Call(base.id, (), (), base.span)
        if not isinstance(base, S.Call):
            d.add("E204", f"`{rest[0]}` has no call of its own to set "
                  f"`{rest[1]}` in", o.key_span,
                  f"set the whole value, e.g. --set {'.'.join(o.keys[:-1])}=forward(perturb = "
                  f"activity, {rest[1]} = ...)" if rest[0] == "estimator" else
                  f"set the whole value: --set {'.'.join(o.keys[:-1])}=...")
            return None
        kwargs = [k for k in base.kwargs if k.name != rest[1]]
        kwargs.append(S.Kwarg(rest[1], o.value, o.span))
        # the call is the override's now: its own errors (optax arguments) point here
        value = S.Call(base.func, base.args, tuple(kwargs), o.span)
    settings = [s for s in sec.settings if s.name != rest[0]]
    settings.append(S.Setting(rest[0], value, o.span))
    return replace(sec, settings=tuple(settings))


def _default_call(head: str, key: str) -> S.Value | None:
    """The call a nested key starts from when the section does not set it."""
    if head == "train" and key in ("optimizer", "schedule"):
        from fgc.front.config import TrainConfig
        return call_syntax(getattr(TrainConfig(), key))
    return None


def call_syntax(call) -> S.Call:
    """A typed :class:`~fgc.front.config.Call` as syntax."""
    def val(v):
        if isinstance(v, bool):
            return S.Bool(v)
        if isinstance(v, (int, float)):
            return S.Number(v)
        return S.Name(str(v))
    return S.Call(call.name, (), tuple(S.Kwarg(k, val(v)) for k, v in call.kwargs))


# --- presets and default groups -----------------------------------------------------------

def _edit_program(prog, o: Override, d: Diags) -> None:
    from fgc.front.config import algorithm_from, group_from, presets
    head, name, rest = o.keys[0], o.keys[1], o.keys[2:]
    if head == "algorithm":
        if name not in presets():
            d.add("E201", f"no algorithm `{name}`", o.span,
                  suggest(name, prog.algorithms) or f"algorithms: {', '.join(prog.algorithms)}")
            return
        sec = _preset_section(name)
        new = _set_in_section(sec, rest, o, d, None)
        if new is not None:
            algo = algorithm_from(new, d, source="preset with --set")
            if algo is not None:
                prog.algorithms[name] = algo
        return
    from fgc.plan.groups import default_groups
    defaults = {g.name: g for g in default_groups(prog.graph)}
    mine = {g.name: g for g in prog.groups}
    if name not in defaults and name not in mine:
        known = [*mine, *(n for n in defaults if n not in mine)]
        d.add("E201", f"no parameter group `{name}`", o.span,
              suggest(name, known) or f"groups: {', '.join(known)}")
        return
    base = mine.get(name) or defaults[name]
    if len(rest) > 1:
        start = base.optimizer or prog.train.optimizer if rest[0] == "optimizer" else None
        if start is None:
            d.add("E204", f"group `{name}` has no estimator of its own "
                  f"to set `{rest[1]}` in", o.key_span,
                  f"set the whole value: --set group.{name}.estimator=forward(...), or the "
                  f"algorithm's: --set algorithm.NAME.estimator.{rest[1]}=...")
            return
        default = call_syntax(start)
    else:
        default = None
    # The default group has no syntax: type the override alone (with a stand-in
    # selector), then copy only what it set onto the group.
    sec = S.Section("group", name, (S.Setting("params", S.Name("network")),), o.span)
    new = _set_in_section(sec, rest, o, d, default)
    if new is None:
        return
    typed = group_from(new, d)
    if typed is None:
        return
    field = {"params": "select"}.get(rest[0], rest[0])
    merged = replace(base, **{field: getattr(typed, field)}, span=o.span)
    prog.groups[:] = [g for g in prog.groups if g.name != name] + [merged]


def _preset_section(name: str) -> S.Section:
    from fgc.front.config import _presets_text
    from fgc.front.parse import parse
    spec = parse(_presets_text(), "<fgc>/algorithms.fg")
    return next(s for s in spec.of(S.Section) if s.kind == "algorithm" and s.name == name)
