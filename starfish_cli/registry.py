"""Name-keyed registries for pruners, healers and datasets, built from config nodes.

A config node is `{name: <registered name>, **constructor arguments}`; unknown or
mistyped keys are errors, never silently ignored.
"""

import inspect
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Generic, TypeVar

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

    def label(self, described: Mapping[str, Any], shown_elsewhere: tuple[str, ...] = ("name", "seed")) -> str:
        """A component's name plus every option that differs from its constructor's default:
        `starfish[epochs=30]`. Reports store it, so a later change of default does not relabel them."""
        name = described["name"]
        defaults = {key: p.default for key, p in inspect.signature(self.get(name)).parameters.items()}
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


# what a YAML value may be for a constructor annotation, and how to say it
_KINDS = {bool: ((bool,), "true or false"), int: ((int,), "a whole number"), float: ((int, float), "a number"),
          str: ((str,), "text"), list: ((list, tuple), "a list"), tuple: ((list, tuple), "a list"),
          Mapping: ((Mapping,), "a mapping"), dict: ((Mapping,), "a mapping"), Sequence: ((list, tuple), "a list")}


def _accepted(annotation) -> list[tuple[tuple[type, ...], str]] | None:
    """The kinds of value an annotation accepts; None when it says nothing checkable."""
    if annotation is None or annotation is type(None):
        return [((type(None),), "null")]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        kinds = [_accepted(arg) for arg in typing.get_args(annotation)]
        return None if any(kind is None for kind in kinds) else [k for kind in kinds for k in kind]
    base = origin or annotation
    for known, kind in _KINDS.items():
        if base is known or (isinstance(base, type) and known is not bool and issubclass(base, known)
                             and base is not bool):
            return [kind]
    return None


def check_types(cls: Callable, options: Mapping[str, Any], prefix: str) -> None:
    """A one-line error for a value of the wrong kind (`healer.lr=fast`), before the constructor runs."""
    parameters = inspect.signature(cls).parameters
    for key, value in options.items():
        if key not in parameters or parameters[key].annotation is inspect.Parameter.empty:
            continue
        kinds = _accepted(parameters[key].annotation)
        if kinds is None:
            continue
        plain_bool = isinstance(value, bool) and not any(bool in types_ for types_, _ in kinds)
        if plain_bool or not any(isinstance(value, types_) for types_, _ in kinds):
            allowed = " or ".join(dict.fromkeys(text for _, text in kinds))
            raise StarfishError(f"{prefix}.{key}={value!r} must be {allowed}")
