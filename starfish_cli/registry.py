"""Name-keyed registries for pruners, healers and datasets, built from config nodes, and the options
those components declare.

A config node is `{name: <registered name>, **constructor arguments}`; unknown or mistyped keys are
errors, never silently ignored. A component declares its options once, as dataclass fields whose
annotations carry the kind, the choices (`Literal`) and the range (`Annotated[..., Range(...)]`):
validation, the reported options, run-folder labels and the resume fingerprint all read that declaration.
"""

import dataclasses
import inspect
import math
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Callable, ClassVar, Generic, Literal, TypeVar

from starfish_cli.runtime.errors import StarfishError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def add(cls: type[T]) -> type[T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = cls
            cls.registered_name = name
            cls.option_prefix = self.kind
            return cls
        return add

    def names(self) -> list[str]:
        return sorted(self._entries)

    def get(self, name: str) -> type[T]:
        if name not in self._entries:
            raise StarfishError(
                f"unknown {self.kind} {name!r}: choose one of {', '.join(self.names())} "
                f"(e.g. {self.kind}={self.names()[0]})"
            )
        return self._entries[name]

    def label(self, described: Mapping[str, Any], shown_elsewhere: tuple[str, ...] = ("name", "seed"),
              run_defaults: Mapping[str, Any] | None = None) -> str:
        """A component's name plus every option that differs from its default: `starfish[epochs=30]`. The
        default is the constructor's, or the run's where its config picks one (`run_defaults`: the healing
        recipe its pruner calls for). Reports store the label, so a later change of default does not relabel them."""
        name = described["name"]
        cls = self.get(name)
        defaults = {key: p.default for key, p in inspect.signature(cls).parameters.items()}
        defaults.update({key: value for key, value in (run_defaults or {}).items() if key in defaults})
        if hasattr(cls, "label_defaults"):  # a component whose defaults depend on another option (a healing recipe)
            defaults.update(cls.label_defaults(described))
        changed = []
        for key, value in described.items():
            if key in shown_elsewhere or key not in defaults:
                continue
            default = list(defaults[key]) if isinstance(defaults[key], tuple) else defaults[key]
            if value != default:
                changed.append(f"{key}={value}")
        return f"{name}[{','.join(changed)}]" if changed else name

    def build(self, node: Mapping[str, Any], **extra: Any) -> T:
        """Instantiate from a config node; `extra` carries run-wide values such as the seed."""
        options = dict(node)
        name = options.pop("name", None)
        if name is None:
            raise StarfishError(f"the {self.kind} config has no 'name' key: set {self.kind}=<name>")
        cls = self.get(str(name))
        check_arguments(cls, options, f"{self.kind} {name!r}", prefix=self.kind)
        if not issubclass(cls, Component):  # a Component checks its declared options itself, however it is built
            check_types(cls, options, prefix=self.kind)
        accepted = inspect.signature(cls).parameters
        extra = {key: value for key, value in extra.items() if key in accepted and key not in options}
        return cls(**options, **extra)


def check_arguments(cls: Callable, options: Mapping[str, Any], what: str, prefix: str) -> None:
    """Raise a one-line error for any key that `cls` does not take as a constructor argument."""
    parameters = inspect.signature(cls).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    valid = [n for n, p in parameters.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL]
    for key in options:
        if key not in valid:
            raise StarfishError(
                f"{what} has no option {key!r}: valid options are "
                f"{', '.join(f'{prefix}.{v}' for v in valid) or 'none'}"
            )


@dataclasses.dataclass(frozen=True)
class Range:
    """The interval a number option must lie in, declared in its annotation:
    `lr: Annotated[float, Range(0, low_open=True)]` is "> 0"."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def holds(self, value: float) -> bool:
        if isinstance(value, float) and math.isnan(value):
            return False
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '≥'} {self.low:g}"
        if self.low is None:
            return f"{'<' if self.high_open else '≤'} {self.high:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


# what a YAML value may be for a declared kind, and how to say it
_KINDS = {bool: ((bool,), "true or false"), int: ((int,), "a whole number"), float: ((int, float), "a number"),
          str: ((str,), "text"), list: ((list, tuple), "a list"), tuple: ((list, tuple), "a list"),
          Mapping: ((Mapping,), "a mapping"), dict: ((Mapping,), "a mapping"), Sequence: ((list, tuple), "a list")}


def _plain_kind(annotation) -> tuple[tuple[type, ...], str] | None:
    base = typing.get_origin(annotation) or annotation
    if annotation is None or annotation is type(None):
        return (type(None),), "null"
    for known, kind in _KINDS.items():
        if base is known or (isinstance(base, type) and known is not bool and issubclass(base, known)
                             and base is not bool):
            return kind
    return None


def _is_kind(value: Any, types_: tuple[type, ...]) -> bool:
    return isinstance(value, types_) and not (isinstance(value, bool) and bool not in types_)


def _yaml(choice: Any) -> str:
    """A choice as a YAML config spells it (true, not True)."""
    return str(choice).lower() if isinstance(choice, bool) else str(choice)


def _describe(annotation) -> str:
    """How an annotation reads in an error: "a whole number ≥ 0", "one of row, layer", …"""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        base, *extras = typing.get_args(annotation)
        return " ".join([_describe(base), *(str(extra) for extra in extras if isinstance(extra, Range))])
    if origin is Literal:
        return "one of " + ", ".join(_yaml(choice) for choice in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(_describe(arg) for arg in typing.get_args(annotation)))
    kind = _plain_kind(annotation)
    if kind and origin in (list, tuple, Sequence) and typing.get_args(annotation):
        return f"a list, each {_describe(typing.get_args(annotation)[0])}"
    return kind[1] if kind else "?"


def problem(annotation, value: Any) -> str | None:
    """Why `value` does not fit the declared `annotation` (the tail of a one-line error), or None."""
    origin = typing.get_origin(annotation)
    if annotation is inspect.Parameter.empty or annotation is Any:
        return None
    if origin is Annotated:
        base, *extras = typing.get_args(annotation)
        found = problem(base, value)
        if found:
            return found
        ranges = [extra for extra in extras if isinstance(extra, Range)]
        return next((f"must be {_describe(annotation)}" for r in ranges if not r.holds(value)), None)
    if origin is Literal:
        choices = typing.get_args(annotation)
        fits = any(value == choice and type(value) is type(choice) for choice in choices)
        return None if fits else ": choose one of " + ", ".join(_yaml(choice) for choice in choices)
    if origin in (typing.Union, types.UnionType):
        members = typing.get_args(annotation)
        found = [problem(member, value) for member in members]
        if any(f is None for f in found):
            return None
        # the member of the value's own kind says best what is wrong (a list's bad item, a number's range)
        for member, member_problem in zip(members, found):
            kind = _plain_kind(typing.get_args(member)[0] if typing.get_origin(member) is Annotated else member)
            if kind and _is_kind(value, kind[0]) and typing.get_origin(member) is not Literal:
                return member_problem
        return f"must be {_describe(annotation)}"
    kind = _plain_kind(annotation)
    if kind is None:
        return None  # a type this checker knows nothing about: the constructor's business
    if not _is_kind(value, kind[0]):
        return f"must be {kind[1]}"
    items = typing.get_args(annotation) if origin in (list, tuple, Sequence) else ()
    if items and isinstance(value, (list, tuple)):
        if any(problem(items[0], item) for item in value):
            return f"must be {_describe(annotation)}"
    return None


def error_text(prefix: str, key: str, value: Any, tail: str) -> str:
    return f"{prefix}.{key}={value!r}{'' if tail.startswith(':') else ' '}{tail}"


def check_types(cls: Callable, options: Mapping[str, Any], prefix: str) -> None:
    """A one-line error for a value that does not fit its declaration (`healer.lr=fast`, `healer.epochs=-1`,
    `pruner.comparison=column`), before the constructor runs."""
    parameters = inspect.signature(cls).parameters
    for key, value in options.items():
        if key in parameters:
            tail = problem(parameters[key].annotation, value)
            if tail:
                raise StarfishError(error_text(prefix, key, value, tail))


class Component:
    """A pruner, healer or sampler: a dataclass whose fields are its declared options (`@dataclass(eq=False)`
    on each subclass). Built from a config node or directly, its options are checked against their
    declarations; subclasses check what spans several options in `check()`, and keep derived state in
    private attributes, so that `describe()` — the reported options — is exactly the declaration."""

    registered_name: ClassVar[str] = "?"
    option_prefix: ClassVar[str] = "?"

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            tail = problem(field.type, getattr(self, field.name))
            if tail:
                raise StarfishError(error_text(self.option_prefix, field.name, getattr(self, field.name), tail))
        self.check()

    def check(self) -> None:
        """Checks across options, and derived private state; a StarfishError for a bad combination."""

    def describe(self) -> dict[str, Any]:
        """The name and every declared option, as plain values (reports, labels, the resume fingerprint)."""
        return {"name": self.registered_name,
                **{field.name: _plain(getattr(self, field.name)) for field in dataclasses.fields(self)}}


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    return value
