"""The one registry of layer kinds: every module in `slidenet.layers` registers its kind here.

    @register
    class Conv(Layer):
        kind = "CONV"
        ...

The parser, shape inference, the summary, gradcheck, the benchmark, model files and pictures
all ask this registry (`lookup(name)`) instead of comparing kind names. `register` checks the
class when its module is imported, so a kind that is half-written (no shape rule, no backward,
no ONNX export, a required argument its grammar cannot read, a name already taken) stops
`import slidenet` with a `RegistryError` instead of failing in the middle of a training run.
"""
import re

from slidenet.layers.base import Layer

_KINDS = {}         # kind name -> class
_NAMES = {}         # kind name or alias -> kind name
_NAME = re.compile(r"[A-Z][A-Z0-9_]*")


class RegistryError(TypeError):
    """A layer kind that cannot be registered (a programming error, not a user's)."""


def register(cls):
    """Add a `Layer` subclass to the registry after checking it is complete; returns it."""
    problems = _problems(cls)
    if problems:
        raise RegistryError(f"layer kind {cls.__module__}.{cls.__name__}: " + "; ".join(problems))
    _KINDS[cls.kind] = cls
    for name in (cls.kind, *cls.aliases):
        _NAMES[name] = cls.kind
    return cls


def _problems(cls):
    if not (isinstance(cls, type) and issubclass(cls, Layer)):
        return ["is not a subclass of slidenet.layers.base.Layer"]
    problems = []
    names = (cls.kind, *cls.aliases)
    for name in names:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            problems.append(f"name {name!r} is not an UPPER-CASE word")
        elif name in _NAMES:
            problems.append(f"name {name} is taken by {_KINDS[_NAMES[name]].__name__}")
    if cls.infer.__func__ is Layer.infer.__func__:
        problems.append("no shape rule (classmethod infer)")
    if not cls.is_input:
        for method in ("forward", "backward", "to_onnx"):
            if getattr(cls, method) is getattr(Layer, method):
                problems.append(f"no {method}")
    fields = set(cls.positional) | set(cls.keywords.values())
    missing = set(cls.required) - fields
    if missing:
        problems.append(f"required {', '.join(sorted(missing))} cannot be written "
                        "(not in positional or keywords)")
    if fields and cls.read_arguments.__func__ is Layer.read_arguments.__func__:
        problems.append("takes arguments but does not read them (classmethod read_arguments)")
    if fields and not cls.usage:
        problems.append("takes arguments but has no usage text")
    if any(key != key.lower() for key in cls.keywords):
        problems.append("keywords must be lower case")
    return problems


def lookup(name):
    """The class of the kind `name` (or of the kind an alias stands for), or None."""
    kind = _NAMES.get(name)
    return None if kind is None else _KINDS[kind]


def kinds():
    """Every registered kind, in registration order: {name: class}."""
    return dict(_KINDS)


def names():
    """Every name a pattern may use: kinds and aliases."""
    return list(_NAMES)
