"""Patterns in the lecture's notation, parsed into a flat list of `LayerSpec`.

    INPUT(32x32x3) -> [[CONV(32) -> RELU]*N -> POOL?]*M -> [FC(128) -> RELU]*K -> FC(10)

Grammar (whitespace is free between tokens, layer and keyword names are case-insensitive):

    pattern := item ('->' item)*
    item    := (layer | '[' pattern ']' '*' count | branches '->' merge) ['?']
    branches:= '{' pattern ('|' pattern)+ '}'
    merge   := a merging layer: ADD or CONCAT (`slidenet.layers.merge`)
    layer   := NAME ['(' [arg (',' arg)*] ')']
    arg     := value | key '=' value
    count   := whole number | UPPER-CASE variable, bound by `variables` (CLI: --set N=2)

`?` marks a layer or group as optional: kept, unless `skip_optional`. `*0` drops a group.
Branches all start from the volume before ``{``; ``{ CONV(64) -> RELU -> CONV(64) | ID } ->
ADD`` is a residual block. The merge's LayerSpec holds each branch's expanded specs
(`LayerSpec.branches`). A CONV or FC written right before BATCHNORM gets ``bias=False``.
Every mistake is a `PatternError` whose caret points at the offending column.
"""
import dataclasses
import difflib
import operator
import re
from dataclasses import dataclass

from slidenet import layers
from slidenet.errors import PatternError, SlidenetError
from slidenet.notation import zoo
from slidenet.notation.arguments import MAX_NUMBER, WHOLE, Value, whole
from slidenet.notation.spec import LayerSpec
from slidenet.storage.limits import MAX_DEPTH, MAX_LAYERS

EXAMPLE = "INPUT(32x32x3) -> CONV(10, 5x5) -> RELU -> FC(10)"

_TROUBLE = re.compile(r"\(|\[|\]|->")      # what cannot stand inside a layer's parentheses
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_COUNT = re.compile(r"-?[A-Za-z0-9_.]+")
_VARIABLE = re.compile(r"[A-Z][A-Z0-9_]*")


def parse(pattern, variables=None, skip_optional=False):
    """Parse a pattern into the expanded net: one `LayerSpec` per layer, INPUT first.

    pattern: e.g. ``"INPUT(32x32x3) -> [CONV(32) -> RELU]*N -> POOL? -> FC(10)"``, or
    ``"zoo:resnet18"`` for a net of `slidenet.notation.zoo`.
    variables: ``{"N": 2}`` binds the UPPER-CASE repeat counts.
    skip_optional: drop the layers and groups marked ``?`` (they are kept by default).
    Returns a list of LayerSpec; a layer inside ``[...]*N`` appears N times, with the same text
    and column each time. Raises PatternError, with a caret under the offending column.
    """
    if not isinstance(pattern, str):
        raise PatternError(f"a pattern is a string such as {EXAMPLE!r}, "
                           f"got {type(pattern).__name__}")
    pattern = zoo.resolve(pattern)          # zoo:resnet18 -> its pattern
    if not pattern.strip():
        raise PatternError(f"empty pattern: write one such as {EXAMPLE}")
    reader = _Reader(pattern)
    bound = _bindings(variables)
    items = _chain(reader, bound, depth=0)
    if reader.skip() < len(pattern):
        raise _stray(reader, inside=False)
    unused = [name for name in bound if name not in reader.used]
    if unused:
        raise PatternError(f"variable {unused[0]} is bound (--set {unused[0]}={bound[unused[0]]}) "
                           f"but the pattern has no repeat count {unused[0]}: write [ ... ]*"
                           f"{unused[0]}, or drop the --set")
    return _finish(items, pattern, skip_optional)


def _finish(items, pattern, skip_optional):
    """The checks on the items read from `pattern`, then the expanded net (`parse`'s result)."""
    _check_input(items, pattern)
    _check_size(items, pattern, skip_optional)
    specs = _drop_biases(list(_expand(items, skip_optional)))
    if len(specs) < 2:
        raise PatternError("the net has no layers after INPUT (groups repeated *0 and skipped "
                           "optional layers drop out): add one, e.g. -> FC(10)",
                           pattern, len(pattern))
    return specs


class Tree:
    """What `parse` reads from a pattern, built by a writer that knows the pattern's structure
    as it writes it (the ONNX importer), so that the text need not be read back.

    The writer names each layer by its text and the column where it writes it, each group by
    its items, count and the column of its '[', each merge by its text, column, branches (lists
    of items; ID is a layer) and the column of its '{'; `specs` then checks and expands the
    items as `parse` does. Each distinct layer text is read once by `parse`'s own reader of a
    layer (a net repeats RELU and its blocks' layers many times), so a layer means here what
    it means in the pattern; the result equals `parse(pattern)` (tests/test_onnx_lean.py).
    Raises PatternError for a text that is not one layer; the writer may then `parse` the
    pattern for its own message, caret and all."""

    def __init__(self):
        self.read = {}      # layer text -> (kind, args, given)

    def _spec(self, text, column, merges):
        known = self.read.get(text)
        if known is None:
            reader = _Reader(text)
            name = reader.match(_NAME)
            if name is None or name.start() != 0:
                raise _not_a_layer(reader)
            spec = _layer(reader, name)
            if reader.skip() != len(text) or spec.text != text:
                raise reader.error(f"{text!r} is not one layer")
            known = self.read[text] = (spec.kind, spec.args, spec.given, spec.type.merges)
        kind, args, given, merging = known
        if merging != merges:
            raise PatternError(f"{text} {'does not merge' if merges else 'merges'} branches "
                               "where the pattern needs it to", text, 0)
        return LayerSpec(kind=kind, text=text, column=column, args=args, given=given)

    def layer(self, text, column):
        return _Layer(self._spec(text, column, False), False)

    def group(self, items, count, column):
        return _Group(items, count, column, False)

    def merge(self, text, column, branches, brace):
        return _Merge(self._spec(text, column, True), branches, brace, False)

    @staticmethod
    def specs(items, pattern, skip_optional=False):
        return _finish(items, pattern, skip_optional)


def parse_sets(assignments):
    """``["N=2", "M=3"]`` (the CLI's repeated ``--set``) -> ``{"N": 2, "M": 3}``.

    Names are UPPER-CASE, values whole numbers from 0 to MAX_NUMBER; anything else raises
    SlidenetError naming the offending ``--set``.
    """
    bound = {}
    for text in assignments or ():
        name, sep, value = (part.strip() for part in text.partition("="))
        if not sep:
            raise SlidenetError(f"--set {text!r}: write NAME=VALUE, e.g. --set N=2")
        if not _VARIABLE.fullmatch(name):
            raise SlidenetError(f"--set {text!r}: {name!r} is not an UPPER-CASE variable name "
                                "such as N")
        if not WHOLE.fullmatch(value) or len(value.lstrip("0")) > 6 or int(value) > MAX_NUMBER:
            raise SlidenetError(f"--set {text!r}: the value must be a whole number from 0 to "
                                f"{MAX_NUMBER:,}, e.g. --set {name}=2")
        if name in bound and bound[name] != int(value):
            raise SlidenetError(f"--set {name} is given twice ({bound[name]} and {value})")
        bound[name] = int(value)
    return bound


@dataclass(frozen=True)
class _Layer:
    spec: LayerSpec
    optional: bool


@dataclass(frozen=True)
class _Group:
    items: list          # of _Layer and _Group
    count: int
    column: int          # of the '['
    optional: bool


@dataclass(frozen=True)
class _Merge:
    spec: LayerSpec      # the merging layer (ADD, CONCAT), branches not yet expanded
    branches: list       # one list of items per branch
    column: int          # of the '{'
    optional: bool


def _column(item):
    return item.spec.column if isinstance(item, _Layer) else item.column


class _Reader:
    """A cursor over the pattern that skips whitespace before each token."""

    def __init__(self, text):
        self.text = text
        self.pos = 0
        self.used = set()       # the variables the counts read

    def skip(self):
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1
        return self.pos

    def at(self, token):
        self.skip()
        return self.text.startswith(token, self.pos)

    def take(self, token):
        found = self.at(token)
        if found:
            self.pos += len(token)
        return found

    def match(self, regex):
        self.skip()
        found = regex.match(self.text, self.pos)
        if found:
            self.pos = found.end()
        return found

    def error(self, message, column=None):
        return PatternError(message, self.text, self.pos if column is None else column)


# ---- syntax: items, groups, counts -------------------------------------------------------

def _chain(reader, variables, depth):
    items = [_item(reader, variables, depth)]
    while True:
        arrow = reader.skip()
        if not reader.take("->"):
            return items
        if reader.skip() == len(reader.text):
            raise reader.error("trailing '->': a layer must follow it", arrow)
        items.append(_item(reader, variables, depth))


def _item(reader, variables, depth):
    start = reader.skip()
    if reader.take("{"):
        return _branches(reader, variables, depth, start)
    if reader.take("["):
        if depth >= MAX_DEPTH:
            raise reader.error(f"brackets nested more than {MAX_DEPTH} deep", start)
        items = _chain(reader, variables, depth + 1)
        if not reader.take("]"):
            if reader.skip() == len(reader.text):
                raise reader.error("unbalanced brackets: this '[' is never closed; "
                                   "close it with ']*N'", start)
            raise _stray(reader, inside=True)
        count = _count(reader, variables)
        return _Group(items, count, start, reader.take("?"))
    name = reader.match(_NAME)
    if name is None:
        raise _not_a_layer(reader)
    spec = _layer(reader, name)
    if spec.type.merges:
        raise PatternError(f"{spec.kind} merges branches: write them in braces just before it, "
                           f"e.g. {{ CONV(64) -> RELU -> CONV(64) | ID }} -> {spec.kind}",
                           reader.text, spec.column)
    return _Layer(spec, reader.take("?"))


def _branches(reader, variables, depth, start):
    """``{ a | b | ... } -> MERGE`` at the cursor (after the '{') -> a _Merge."""
    if depth >= MAX_DEPTH:
        raise reader.error(f"brackets nested more than {MAX_DEPTH} deep", start)
    branches = [_chain(reader, variables, depth + 1)]
    while reader.take("|"):
        branches.append(_chain(reader, variables, depth + 1))
    if not reader.take("}"):
        if reader.skip() == len(reader.text):
            raise reader.error("unbalanced braces: this '{' is never closed; close it with "
                               "'} -> ADD' or '} -> CONCAT'", start)
        raise _stray(reader, inside=True)
    if len(branches) < 2:
        raise reader.error("braces hold two or more branches separated by '|', e.g. "
                           "{ CONV(64) -> RELU -> CONV(64) | ID } -> ADD; one chain needs no "
                           "braces", start)
    arrow = reader.skip()
    name = reader.match(_NAME) if reader.take("->") else None
    kind = layers.lookup(name.group().upper()) if name else None
    if kind is None or not kind.merges:
        merges = " or ".join(k for k, cls in layers.kinds().items() if cls.merges)
        raise reader.error(f"branches must merge: follow the '}}' with -> {merges} "
                           "(ADD sums the branches, CONCAT stacks them along the depth)",
                           name.start() if name else arrow)
    spec = _layer(reader, name)
    return _Merge(spec, branches, start, reader.take("?"))


def _count(reader, variables):
    star = reader.pos   # where the '*' belongs: right after the ']'
    if not reader.take("*"):
        raise reader.error("a bracket group needs a repeat count: write [ ... ]*2, "
                           "or [ ... ]*N with --set N=2", star)
    token = reader.match(_COUNT)
    if token is None:
        raise reader.error("expected a repeat count after '*': a whole number or an "
                           "UPPER-CASE variable such as N")
    value = Value(token.group(), token.start(), reader.text)
    if _VARIABLE.fullmatch(value.text):
        reader.used.add(value.text)
        if value.text not in variables:
            raise value.error(f"variable {value.text} is not bound: "
                              f"bind it with --set {value.text}=2")
        return variables[value.text]
    if _NAME.fullmatch(value.text):
        raise value.error(f"repeat count {value.text!r} must be a whole number or an "
                          "UPPER-CASE variable such as N")
    return whole(value, "repeat count", minimum=0)


def _not_a_layer(reader):
    if reader.pos == len(reader.text):
        return reader.error("the pattern ends where a layer was expected")
    char = reader.text[reader.pos]
    if char == "]":
        return reader.error("expected a layer before ']'")
    if char in "|}":
        return reader.error(f"expected a layer before {char!r}: a branch that keeps the volume "
                            "as it is is written ID")
    return reader.error(f"expected a layer name, '[' or '{{', got {char!r}")


def _stray(reader, inside):
    """The error for text where '->' (or, inside brackets, ']') should come next."""
    char = reader.text[reader.pos]
    if char == "]":
        return reader.error("unbalanced brackets: this ']' has no matching '['")
    if char in "|}":
        return reader.error(f"this {char!r} belongs inside braces: {{ ... | ... }} -> ADD")
    if char == "*":
        return reader.error("'*' repeats a bracket group: write [ ... ]*N")
    if char == "?":
        return reader.error("'?' marks one layer or group as optional; it cannot repeat")
    expected = "'->', ']', '|' or '}'" if inside else "'->'"
    word = reader.match(_NAME)
    got = repr(word.group()) if word else repr(char)
    return reader.error(f"expected {expected} here, got {got}",
                        word.start() if word else None)


# ---- layers and their arguments ----------------------------------------------------------

def _kind(name):
    """The registered layer class a name stands for, or a PatternError with a suggestion."""
    upper = name.group().upper()
    kind = layers.lookup(upper)
    if kind is not None:
        return kind
    if upper == "SOFTMAX":
        raise PatternError("SOFTMAX is not a layer here: the softmax is part of the loss "
                           "(`train --loss softmax`, the default), applied to the scores of the "
                           "last FC; end the pattern with that FC", name.string, name.start())
    known = layers.names()
    close = difflib.get_close_matches(upper, known, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}?" if close else "known layers: " + ", ".join(known)
    raise PatternError(f"unknown layer {name.group()!r}; {hint}", name.string, name.start())


def _layer(reader, name):
    kind = _kind(name)
    args = _arguments(reader) if reader.at("(") else []
    # reader.at skipped any spaces after a bare name; they are not part of the layer's text.
    text = reader.text[name.start():reader.pos].rstrip()
    values = _bind(kind, args, Value(text, name.start(), reader.text))
    return LayerSpec(kind=kind.kind, text=text, column=name.start(),
                     args=tuple(kind.read_arguments(values).items()), given=frozenset(values))


def _arguments(reader):
    """Read ``( ... )`` at the cursor -> list of (key _Value or None, value _Value)."""
    opening = reader.skip()
    closing = reader.text.find(")", opening)
    inner = reader.text[opening + 1:closing] if closing >= 0 else reader.text[opening + 1:]
    trouble = _TROUBLE.search(inner)
    if closing < 0 or trouble:
        raise reader.error("unbalanced parentheses: this '(' is never closed", opening)
    reader.pos = closing + 1
    if not inner.strip():
        return []
    args, start = [], opening + 1
    for piece in inner.split(","):
        key = None
        if "=" in piece:
            left, right = piece.split("=", 1)
            key = _strip(left, start, reader.text)
            piece, start = right, start + len(left) + 1
        value = _strip(piece, start, reader.text)
        if not value.text:
            raise value.error("missing argument value")
        if key is not None and not key.text:
            raise key.error("missing argument name before '='")
        args.append((key, value))
        start += len(piece) + 1
    return args


def _strip(piece, start, pattern):
    stripped = piece.lstrip()
    return Value(stripped.rstrip(), start + len(piece) - len(stripped), pattern)


def _bind(kind, args, layer):
    """Match arguments to the kind's fields -> {field: Value}; checks counts, names and the
    required ones against its grammar (`Layer.positional`, `keywords`, `required`)."""
    usage = kind.usage or f"{kind.kind} takes no arguments"
    fields, seen_keyword = {}, False
    for key, value in args:
        if key is None:
            if seen_keyword:
                raise value.error(f"a value without a name cannot follow a name=value: {usage}")
            if len(fields) >= len(kind.positional):
                raise value.error(f"too many values: {usage}")
            field, at = kind.positional[len(fields)], value
        else:
            seen_keyword = True
            field, at = kind.keywords.get(key.text.lower()), key
            if field is None:
                raise key.error(f"{kind.kind} has no argument {key.text}=: {usage}")
        if field in fields:
            raise at.error(f"{field} is given twice: {usage}")
        fields[field] = value
    for required in kind.required:
        if required not in fields:
            raise layer.error(f"{layer.text} needs its {required}: {usage}")
    return fields


# ---- the whole net -----------------------------------------------------------------------

def _bindings(variables):
    """Check the repeat-count variables: whole numbers from 0 to MAX_NUMBER."""
    bound = {}
    for name, value in (variables or {}).items():
        try:
            number = None if isinstance(value, bool) else operator.index(value)
        except TypeError:
            number = None
        if number is None or not 0 <= number <= MAX_NUMBER:
            raise PatternError(f"variable {name} = {value!r}: a repeat count must be a whole "
                               f"number from 0 to {MAX_NUMBER:,}")
        bound[name] = number
    return bound


def _inputs(items):
    for item in items:
        if isinstance(item, _Group):
            yield from _inputs(item.items)
        elif isinstance(item, _Merge):
            for branch in item.branches:
                yield from _inputs(branch)
        elif item.spec.type.is_input:
            yield item


def _check_input(items, pattern):
    """INPUT(HxWxD) comes first, once, and is not optional."""
    first, inputs = items[0], list(_inputs(items))
    if not inputs:
        raise PatternError(f"a pattern starts with INPUT(HxWxD), e.g. {EXAMPLE}",
                           pattern, _column(first))
    if inputs[0] is not first:
        raise PatternError("INPUT must come first, outside any brackets or braces",
                           pattern, inputs[0].spec.column)
    if len(inputs) > 1:
        raise PatternError("INPUT appears twice: a net has one input, written first",
                           pattern, inputs[1].spec.column)
    if first.optional:
        raise PatternError("INPUT cannot be optional", pattern, first.spec.column)


def _size(items, skip_optional):
    """How many layers `items` expand to, computed without expanding."""
    total = 0
    for item in items:
        if skip_optional and item.optional:
            continue
        if isinstance(item, _Layer):
            total += 1
        elif isinstance(item, _Merge):
            total += 1 + sum(_size(branch, skip_optional) for branch in item.branches)
        else:
            total += item.count * _size(item.items, skip_optional)
    return total


def _check_size(items, pattern, skip_optional):
    total = 0
    for item in items:
        total += _size([item], skip_optional)
        if total > MAX_LAYERS:
            grand = _size(items, skip_optional)
            raise PatternError(f"the pattern expands to {grand:,} layers; at most "
                               f"{MAX_LAYERS:,} are allowed: lower a repeat count",
                               pattern, _column(item))


def _expand(items, skip_optional):
    for item in items:
        if skip_optional and item.optional:
            continue
        if isinstance(item, _Layer):
            yield item.spec
        elif isinstance(item, _Merge):
            yield dataclasses.replace(item.spec, branches=tuple(
                tuple(_expand(branch, skip_optional)) for branch in item.branches))
        else:
            for _ in range(item.count):
                yield from _expand(item.items, skip_optional)


def _drop_biases(specs):
    """A CONV or FC directly before BATCHNORM gets bias=False, in every chain and branch:
    BATCHNORM subtracts each channel's mean, which cancels a bias exactly (its gradient is
    zero), as PyTorch's bias=False and Keras's use_bias=False have it."""
    out = []
    for spec, after in zip(specs, [*specs[1:], None]):
        if spec.branches:
            spec = dataclasses.replace(spec, branches=tuple(
                tuple(_drop_biases(list(branch))) for branch in spec.branches))
        if spec.type.has_bias and after is not None and after.type.cancels_bias:
            spec = dataclasses.replace(spec, args=tuple(
                (key, False if key == "bias" else value) for key, value in spec.args))
        out.append(spec)
    return out
