"""Name -> constructor registries: how a config swaps priors, likelihoods, networks and optimizers.

A *spec* is either a name (``"mixture"``) or a table with a ``name`` and that part's options
(``{"name": "mixture", "num_components": 10}``). Options are checked against the
constructor's signature and annotations, so a typo or a wrong type fails before training
with a message that lists what is allowed.
"""

import collections.abc
import inspect
import math
import typing
from typing import Any, Callable, Dict, Mapping, Union

from pyrovae.errors import ConfigError, UnknownNameError, did_you_mean, one_line, shown

#: integers in a config are C integers (int64): anything outside is refused before it reaches torch
INT_RANGE = (-2**63, 2**63)

Spec = Union[str, Mapping[str, Any]]


def _type_name(annotation) -> str:
    if annotation is inspect.Parameter.empty:
        return "any"
    if annotation is float:
        return "a finite number"
    if annotation is str:
        return "a string"
    if annotation is bool:
        return "true or false"
    if annotation is int:
        return "an integer"
    origin = typing.get_origin(annotation)
    if origin is Union:
        return " or ".join(_type_name(a) for a in typing.get_args(annotation) if a is not type(None))
    if origin in (dict, collections.abc.Mapping) or annotation is dict:
        return "a table"
    if origin in (list, tuple, typing.Sequence):
        args = typing.get_args(annotation)
        return f"a list of {_type_name(args[0]).removeprefix('a ').removeprefix('an ')}s" if args else "a list"
    return getattr(annotation, "__name__", str(annotation))


def check_type(value, annotation) -> bool:
    """Whether a config value (parsed from TOML) fits a constructor annotation.

    ints are accepted where floats are expected; bools are never taken for numbers; NaN and
    infinities are never accepted.
    """
    if annotation is inspect.Parameter.empty or annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin is Union:
        return any(check_type(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin in (dict, collections.abc.Mapping):  # a part spec's table (Spec)
        return isinstance(value, Mapping)
    if origin in (dict, collections.abc.Mapping):  # a part spec's table (Spec)
        return isinstance(value, Mapping)
    if origin in (list, tuple, typing.Sequence):
        if not isinstance(value, (list, tuple)):
            return False
        args = typing.get_args(annotation)
        return not args or all(check_type(v, args[0]) for v in value)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool) and INT_RANGE[0] <= value < INT_RANGE[1]
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


class Registry:
    """A named family of constructors (priors, likelihoods, ...).

    :param str kind: what the family is called in messages, e.g. ``"prior"``.
    :param tuple context: keyword arguments the library passes itself (e.g. ``latent_dim``);
        users may not set them in a spec.
    """

    def __init__(self, kind: str, context: tuple = ()):
        self.kind = kind
        self.context = tuple(context)
        self._entries: Dict[str, Callable] = {}

    def register(self, name: str) -> Callable:
        """A decorator that registers a class or function under ``name`` (a later one replaces it)."""

        def decorator(fn):
            self._entries[name] = fn
            return fn

        return decorator

    def names(self):
        """The registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name) -> bool:
        return name in self._entries

    def get(self, name: str, where: str = "") -> Callable:
        """The constructor registered as ``name``; an unknown name is one line naming the valid ones."""
        if not isinstance(name, str) or name not in self._entries:
            raise UnknownNameError(
                f"{where or self.kind}: unknown {self.kind} {shown(name)}{did_you_mean(name, self.names())}; "
                f"valid: {', '.join(self.names())}"
            )
        return self._entries[name]

    def options(self, name: str) -> Dict[str, inspect.Parameter]:
        """The user-settable options of one entry, with their defaults and annotations."""
        sig = inspect.signature(self.get(name))
        hints = typing.get_type_hints(self._entries[name].__init__ if inspect.isclass(self._entries[name])
                                      else self._entries[name])
        return {
            p.name: p.replace(annotation=hints.get(p.name, p.annotation))
            for p in sig.parameters.values()
            if p.name not in self.context and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        }

    def split(self, spec: Spec, where: str = "") -> tuple:
        """Validate a spec and return ``(name, options)``."""
        where = where or self.kind
        if isinstance(spec, str):
            name, options = spec, {}
        elif isinstance(spec, Mapping):
            if "name" not in spec:
                raise ConfigError(f"{where}: a table needs a 'name'; valid names: {', '.join(self.names())}")
            options = dict(spec)
            name = options.pop("name")
        else:
            raise ConfigError(f"{where}: expected a name or a table with 'name', got {shown(spec)}")
        self.get(name, where)
        allowed = self.options(name)
        for key, value in options.items():
            if key not in allowed:
                valid = ", ".join(sorted(allowed)) or "none"
                raise ConfigError(f"{where}.{one_line(str(key), 40)}: unknown option of {self.kind} {name!r}"
                                  f"{did_you_mean(key, allowed)}; valid options: {valid}")
            if not check_type(value, allowed[key].annotation):
                raise ConfigError(
                    f"{where}.{key} = {shown(value)}: expected {_type_name(allowed[key].annotation)}"
                )
        return name, options

    def build(self, spec: Spec, where: str = "", **context) -> Any:
        """Construct an entry from its spec; constructor ``ValueError`` becomes a ConfigError."""
        name, options = self.split(spec, where)
        entry = self._entries[name]
        parameters = inspect.signature(entry).parameters
        # only what the entry takes: a function with **kwargs takes it all, a class what its __init__ names
        # (one that defines none inherits nn.Module's (*args, **kwargs), which takes nothing)
        if inspect.isclass(entry) or not any(p.kind == p.VAR_KEYWORD for p in parameters.values()):
            context = {k: v for k, v in context.items() if k in parameters}
        try:
            return entry(**context, **options)
        except ConfigError:
            raise
        except ValueError as e:
            raise ConfigError(f"{where or self.kind} {name!r}: {one_line(str(e), 200)}") from None


def check_keys(where: str, keys, valid) -> None:
    """Every key of a table is one of ``valid``; else one line naming the first unknown one, the
    nearest valid key where one is close, and the valid keys."""
    for key in keys:
        if key not in valid:
            raise ConfigError(f"{where}.{one_line(str(key), 40)}: unknown key{did_you_mean(key, valid)}; "
                              f"valid keys: {', '.join(sorted(valid))}")


def check_choice(key, value, allowed, error=ConfigError):
    if value not in allowed:
        raise error(f"{key} = {shown(value)}: valid: {', '.join(allowed)}")


def check_at_least(key, value, minimum):
    if value < minimum:
        raise ConfigError(f"{key} = {shown(value)}: must be >= {minimum}")
