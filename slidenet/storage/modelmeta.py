"""A model file's meta, checked before anything is built from it.

A model file's checksum proves only that the file is whole, not that it is ours: anyone can
recompute it. So the meta (`modelfile.META`, JSON) is read as untrusted input:

- `read_json(data, where, error)`: JSON nested at most MAX_DEPTH deep (a deeper document is a
  refusal, never a RecursionError);
- `check(meta, path)`: every field a slidenet model file has is of its type (the pattern a
  bounded string, the class names a list of strings, the epoch a whole number, the history a
  list of epochs whose values are numbers, the config the settings of `TrainConfig`);
- `check_sizes(infos, arrays, dtype, path)`: the weights the pattern implies are the weights
  the file holds, and one image's activations fit the input budget, before a single weight is
  allocated. A 2.5 KB file whose pattern says FC(80000) is refused here, not after 12 GB.

Each refusal is a `ModelFileError` naming the file and the field.
"""
import json
import math
from dataclasses import fields

from slidenet.errors import ModelFileError, SlidenetError
from slidenet.storage import limits
from slidenet.storage.limits import MAX_CLASSES
from slidenet.storage.limits import MAX_META_DEPTH as MAX_DEPTH
from slidenet.storage.limits import MAX_META_TEXT as MAX_TEXT
from slidenet.training.config import TrainConfig

DTYPES = ("float32", "float64")
_NUMBER = (int, float)
# TrainConfig's field types, by name: bool before int (a bool is an int in Python).
_SETTINGS = {f.name: {"str": str, "dict": dict, "bool": bool, "int": int, "float": _NUMBER}[
    f.type if isinstance(f.type, str) else f.type.__name__] for f in fields(TrainConfig)}


def read_json(data, where, error=ModelFileError):
    """The JSON value in `data` (bytes or str), nested at most MAX_DEPTH deep; `error` naming
    `where` for text that is not JSON or nests deeper."""
    try:
        value = json.loads(data)
    except RecursionError:
        value = None
        deep = True
    except (ValueError, UnicodeDecodeError) as err:
        raise error(f"{where} is not valid JSON ({str(err).splitlines()[0]})") from None
    else:
        deep = _depth(value) > MAX_DEPTH
    if deep:
        raise error(f"{where}: its JSON nests more than {MAX_DEPTH} deep; slidenet never writes "
                    "that, so the file is damaged or was made to be refused")
    return value


def _depth(value):
    """How deep lists and dicts nest in `value` (a number is 0, [] is 1), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (list, dict)):
            level += 1
            deepest = max(deepest, level)
            if level > MAX_DEPTH:
                break
            stack.extend((child, level) for child in
                         (item.values() if isinstance(item, dict) else item))
    return deepest


def check(meta, path):
    """ModelFileError unless each field of a model's `meta` that slidenet reads has its type."""
    def refuse(field, want):
        shown = json.dumps(meta[field])[:60]
        raise ModelFileError(f"{path}: its meta's {field} is {shown}, not {want}; the file is "
                             "damaged or was not written by slidenet")

    if not isinstance(meta.get("pattern"), str) or not 0 < len(meta["pattern"]) <= MAX_TEXT:
        if "pattern" not in meta:
            raise ModelFileError(f"{path}: not a complete slidenet model (its meta has no "
                                 "pattern)")
        refuse("pattern", f"a pattern of at most {MAX_TEXT:,} characters")
    variables = meta.get("variables", {})
    if not isinstance(variables, dict) or not all(
            isinstance(k, str) and type(v) is int for k, v in variables.items()):
        refuse("variables", "an object of names and whole numbers")
    if not isinstance(meta.get("skip_optional", False), bool):
        refuse("skip_optional", "true or false")
    if meta.get("dtype", "float32") not in DTYPES:
        refuse("dtype", " or ".join(DTYPES))
    names = meta.get("class_names", [])
    if names is not None and (not isinstance(names, list) or len(names) > MAX_CLASSES or not all(
            isinstance(n, str) and len(n) <= MAX_TEXT for n in names)):
        refuse("class_names", "a list of names")
    for field in ("data", "source", "producer"):
        value = meta.get(field)
        if value is not None and (not isinstance(value, str) or len(value) > MAX_TEXT):
            refuse(field, "a string")
    epoch = meta.get("epoch", 0)
    if type(epoch) is not int or epoch < 0:
        refuse("epoch", "a whole number of epochs")
    config = meta.get("config", {})
    if not isinstance(config, dict):
        refuse("config", "an object of training settings")
    for name, value in config.items():
        want = _SETTINGS.get(name)
        if want is str and value is None:
            continue                # a run of `slidenet.fit` on arrays: no data spec, no folder
        if want is None or not isinstance(value, want) or (
                want is not bool and isinstance(value, bool)):
            shown = json.dumps({name: value})[:60]
            raise ModelFileError(f"{path}: its meta's config holds {shown}, which is not a "
                                 "training setting of slidenet's; the file is damaged or was "
                                 "not written by slidenet")
    if "history" in meta:
        try:
            check_history(meta["history"], f"{path}: its meta's history", empty_ok=True)
        except SlidenetError as err:
            raise ModelFileError(str(err)) from None


HISTORY_KEYS = ("epoch", "loss", "accuracy")


def check_history(history, where, empty_ok=False):
    """SlidenetError naming `where` unless `history` is a list of epochs: objects with
    HISTORY_KEYS, a whole epoch number, and numbers (or null, for a missing validation) as
    values."""
    if not isinstance(history, list):
        raise SlidenetError(f"{where} is not a list of epochs")
    if not history and not empty_ok:
        raise SlidenetError(f"{where}: the history is empty; train for at least one epoch")
    for entry in history:
        if not isinstance(entry, dict) or any(key not in entry for key in HISTORY_KEYS):
            raise SlidenetError(f"{where}: every epoch needs {', '.join(HISTORY_KEYS)}; found "
                                f"{json.dumps(entry)[:80]}")
        bad = [k for k, v in entry.items() if v is not None and (
            not isinstance(v, _NUMBER) or isinstance(v, bool) or not math.isfinite(v))]
        if bad or type(entry["epoch"]) is not int or entry["epoch"] < 0:
            key = bad[0] if bad else "epoch"
            raise SlidenetError(f"{where}: an epoch's {key} is {json.dumps(entry[key])[:40]}, "
                                "not a number")


def check_sizes(infos, arrays, dtype, path):
    """Before building the net of `infos` (every LayerInfo, branches included:
    `shapes.walk_infos` of `shapes.infer`'s) in `dtype`: the file's arrays
    must hold every weight the pattern implies, and one image's activations must fit the input
    budget. ModelFileError with the numbers otherwise."""
    every = list(infos)
    implied = sum(info.params for info in every)
    held = sum(a.size for name, a in arrays.items() if name.startswith("param/"))
    # A file written before a CONV or FC straight before BATCHNORM lost its bias still holds
    # that bias (`model._fold_dropped_biases` folds it into the running mean): K numbers each.
    dropped = sum(info.output_shape[-1] for info in every
                  if getattr(info.spec.type, "has_bias", False) and not info.spec.bias
                  and "bias" not in info.spec.given)
    if not implied <= held <= implied + dropped:
        raise ModelFileError(f"{path}: not a complete slidenet model: its pattern implies "
                             f"{implied:,} weights but the file holds {held:,}; the file is "
                             "damaged or its meta was altered")
    itemsize = 8 if dtype == "float64" else 4
    limits.check_claim(sum(info.activation_bytes for info in every) // 4 * itemsize,
                       f"{path}: one image through its net", ModelFileError)
