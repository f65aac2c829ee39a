"""The layer registry refuses a kind that is not whole, at registration (so at import), and
says what is missing; a kind that is whole has no problems."""
import pytest

from slidenet.layers import Inferred, Layer, RegistryError, kinds, register
from slidenet.layers.registry import _problems


def whole_kind(**changes):
    """A complete pass-through kind, with `changes` applied as class attributes (None deletes
    the attribute, so that the base class's stand-in shows through)."""
    class Whole(Layer):
        kind = "WHOLETEST"
        positional = ("size",)
        required = ("size",)
        usage = "WHOLETEST(size)"

        @classmethod
        def infer(cls, spec, walk):
            return Inferred(walk.shape)

        @classmethod
        def read_arguments(cls, spec, given):
            return given

        def forward(self, x, train):
            return x

        def backward(self, dout, need_dx=True):
            return dout

        def to_onnx(self, graph):
            pass
    for key, value in changes.items():
        if value is None:
            delattr(Whole, key)
        else:
            setattr(Whole, key, value)
    return Whole


def test_a_whole_kind_has_no_problems():
    assert _problems(whole_kind()) == []


@pytest.mark.parametrize("changes, says", [
    ({"infer": None}, "no shape rule"),
    ({"forward": None}, "no forward"),
    ({"backward": None}, "no backward"),
    ({"to_onnx": None}, "no to_onnx"),
    ({"kind": "CONV"}, "name CONV is taken by Conv"),
    ({"kind": "lower"}, "is not an UPPER-CASE word"),
    ({"required": ("size", "depth")}, "required depth cannot be written"),
    ({"read_arguments": None}, "does not read them"),
    ({"usage": ""}, "has no usage text"),
    ({"keywords": {"S": "stride"}}, "keywords must be lower case"),
])
def test_a_kind_missing_a_piece_is_refused_and_told_which(changes, says):
    half = whole_kind(**changes)
    with pytest.raises(RegistryError, match=says):
        register(half)
    assert half.kind not in kinds() or kinds()[half.kind] is not half


def test_only_layers_register():
    with pytest.raises(RegistryError, match="not a subclass"):
        register(int)
