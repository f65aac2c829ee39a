"""The ONNX graph an export writes, one layer at a time: what `Layer.to_onnx(graph)` is given.

The layout decision lives here. slidenet's volumes are (N, H, W, D); ONNX's Conv, MaxPool,
AveragePool, GlobalAveragePool and BatchNormalization read (N, D, H, W). The graph transposes
the pixels once, right after the normalisation, and stays (N, D, H, W) to the first FC:

    conv weights    (F_h, F_w, D, K)  ->  (K, D, F_h, F_w)              `conv_weights`
    FC after a volume: Flatten gives (D, H, W) order where slidenet's is (H, W, D), so the
                    FC's rows are put in that order                       `flatten`

A layer writes itself with `node` and `initializer`, starting from `tensor` (the name of the
current value) and setting `tensor` to its output:

    graph.tensor = graph.node("Relu", [graph.tensor])
"""
import importlib

import numpy as np

from slidenet.errors import SlidenetError

# How an export's metadata ("input") describes its input: the pixels as they are, unscaled.
PIXELS = "pixels 0..255"


def require_onnx(module="onnx"):
    """The `onnx` (or `onnxruntime`) module, or a SlidenetError saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise SlidenetError(f"ONNX export and import need the {module} package, which is not "
                            "installed: pip install 'slidenet[onnx]'") from None


class Graph:
    """Nodes and weights of an ONNX graph being written, and the current value's name.

    tensor: name of the value the next layer reads. After the input it is (N, D, H, W) (a
    volume) until the first FC flattens it to (N, n); `is_volume` says which.
    scope: the layer being written ("conv1"); it names the nodes and weights it adds.
    """

    def __init__(self, onnx, tensor):
        self._onnx = onnx
        self.nodes = []
        self.initializers = []
        self.tensor = tensor
        self.is_volume = True
        self.scope = "input"
        self._taken = {tensor}

    def _fresh(self, name):
        unique, count = name, 1
        while unique in self._taken:
            count += 1
            unique = f"{name}_{count}"
        self._taken.add(unique)
        return unique

    def node(self, op_type, inputs, **attributes):
        """Add an `op_type` node reading `inputs` (names); returns the name of its one output."""
        name = self._fresh(f"{self.scope}/{op_type}")
        self.nodes.append(self._onnx.helper.make_node(op_type, list(inputs), [name], name=name,
                                                      **attributes))
        return name

    def initializer(self, key, array):
        """Add a float32 weight named "<scope>.<key>" ("conv1.W"); returns its name."""
        name = self._fresh(f"{self.scope}.{key}")
        value = np.array(array, dtype=np.float32, order="C")   # (ascontiguousarray makes 0-d 1-d)
        self.initializers.append(self._onnx.numpy_helper.from_array(value, name))
        return name

    # ---- the layout decision ----

    @staticmethod
    def conv_weights(w):
        """A CONV's W (F_h, F_w, D, K) as ONNX's Conv wants it: (K, D, F_h, F_w)."""
        return np.transpose(w, (3, 2, 0, 1))

    @staticmethod
    def window_attributes(size, stride, pad):
        """Conv and pool attributes for a window F, S and P per axis (the same P on both sides)."""
        return {"kernel_shape": list(size), "strides": list(stride),
                "pads": [pad[0], pad[1], pad[0], pad[1]]}

    def flatten(self, weights, input_shape):
        """Before an FC: flatten the current volume (if it is one) and return the FC's
        `weights` (I, O) with their rows in the order of that flattening.

        Flatten of (N, D, H, W) lists each image in (D, H, W) order; W's rows are in slidenet's
        (H, W, D) order. Leaving them would multiply every number by another number's weight
        and still run: the classic silent bug of exchanging CNNs between layouts.
        """
        if not self.is_volume:
            return weights
        self.tensor = self.node("Flatten", [self.tensor], axis=1)
        self.is_volume = False
        h, w, d = input_shape
        return rows_hwd_to_dhw(weights, (h, w, d))

    def finish(self):
        """Make the last value (N, n): a net that ends on a volume is flattened in slidenet's
        (H, W, D) order, as its scores are."""
        if self.is_volume:
            self.scope = "scores"
            self.tensor = self.node("Transpose", [self.tensor], perm=[0, 2, 3, 1])
            self.tensor = self.node("Flatten", [self.tensor], axis=1)
            self.is_volume = False


def rows_hwd_to_dhw(weights, shape):
    """FC weights (H*W*D, O) whose rows follow (H, W, D) order -> rows in (D, H, W) order."""
    h, w, d = shape
    out = weights.shape[1]
    return weights.reshape(h, w, d, out).transpose(2, 0, 1, 3).reshape(h * w * d, out)


def rows_dhw_to_hwd(weights, shape):
    """The inverse of `rows_hwd_to_dhw`: rows in (D, H, W) order -> (H, W, D) order."""
    h, w, d = shape
    out = weights.shape[1]
    return weights.reshape(d, h, w, out).transpose(1, 2, 0, 3).reshape(h * w * d, out)
