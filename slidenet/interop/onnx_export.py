"""A slidenet net as a standard ONNX model, for onnxruntime and every other ONNX tool.

    slidenet export runs/demo/best.npz --out digits.onnx

The graph (opset 17 unless asked for a newer one):

    pixels  float32 (N, H, W, D), values 0..255 as in the image files; N is dynamic
      -> Mul(1 / (255 std)) -> Add(-mean / std)        the model's normaliser, per channel
      -> Transpose to (N, D, H, W)                     once; see `onnx_graph` for the layout
      -> each layer's `to_onnx`                         Conv, MaxPool, AveragePool, Gemm, ...
      -> scores (N, C) -> Softmax -> probabilities (N, C)

The model's metadata (`metadata_props`) holds the pattern, the class names and the normaliser
as JSON, so `slidenet import` of the file gets back the same model.
"""
import json

from slidenet import __version__
from slidenet.errors import SlidenetError
from slidenet.interop.onnx_graph import PIXELS, Graph, require_onnx
from slidenet.storage.writing import write_bytes

OPSET = 17          # the oldest opset an export writes: Softmax on one axis, Dropout's ratio input


def to_model(net, normalizer, class_names=(), opset=OPSET):
    """An onnx.ModelProto computing `net` on pixels 0..255, checked with the full ONNX checker.

    net: `slidenet.Net`; normalizer: its `Normalizer`; class_names: one per score (may be empty).
    """
    onnx = require_onnx()
    newest = onnx.defs.onnx_opset_version()
    if not OPSET <= opset <= newest:
        raise SlidenetError(f"--opset {opset}: an export writes opset {OPSET} to {newest} (the "
                            "newest the installed onnx package knows)")
    h, w, d = net.input_shape
    graph = Graph(onnx, "pixels")
    scale, shift = normalizer.affine()
    graph.tensor = graph.node("Mul", [graph.tensor, graph.initializer("scale", scale)])
    graph.tensor = graph.node("Add", [graph.tensor, graph.initializer("shift", shift)])
    graph.tensor = graph.node("Transpose", [graph.tensor], perm=[0, 3, 1, 2])
    for layer in net.layers:
        graph.scope = layer.name
        layer.to_onnx(graph)
    graph.finish()
    graph.nodes[-1].output[0] = "scores"
    graph.scope = "output"
    graph.nodes.append(onnx.helper.make_node("Softmax", ["scores"], ["probabilities"],
                                             name="output/Softmax", axis=1))
    classes = net.num_outputs
    float32 = onnx.TensorProto.FLOAT
    body = onnx.helper.make_graph(
        graph.nodes, "slidenet",
        [onnx.helper.make_tensor_value_info("pixels", float32, ["N", h, w, d])],
        [onnx.helper.make_tensor_value_info(name, float32, ["N", classes])
         for name in ("probabilities", "scores")],
        graph.initializers,
        doc_string=f"slidenet net {net.pattern}; input pixels float32 (N, {h}, {w}, {d}), "
                   "values 0..255")
    opsets = [onnx.helper.make_opsetid("", opset)]
    model = onnx.helper.make_model(body, opset_imports=opsets, producer_name="slidenet",
                                   producer_version=__version__,
                                   ir_version=onnx.helper.find_min_ir_version_for(opsets))
    onnx.helper.set_model_props(model, _metadata(net, normalizer, class_names))
    onnx.checker.check_model(model, full_check=True)
    return model


def _metadata(net, normalizer, class_names):
    meta = {"pattern": net.pattern, "class_names": json.dumps([str(c) for c in class_names]),
            "normalizer": json.dumps({"mean": [float(v) for v in normalizer.mean],
                                      "std": [float(v) for v in normalizer.std]}),
            "input": f"{PIXELS}, float32 (N, H, W, D), channels last"}
    if net.variables:
        meta["variables"] = json.dumps(net.variables)
    if net.skip_optional:
        meta["skip_optional"] = "true"
    return meta


def to_bytes(net, normalizer, class_names=(), opset=OPSET):
    """The serialised ONNX model of `net`, for `onnxruntime.InferenceSession(bytes)` (bench)."""
    return to_model(net, normalizer, class_names, opset).SerializeToString()


def export_file(model_path, out_path, opset=OPSET):
    """Write the model in `model_path` (a slidenet model file) to `out_path` as ONNX, through
    `writing.write_bytes` (atomic; a FileWriteError when the world refuses). Returns (the slidenet Model, the onnx.ModelProto)."""
    from slidenet.model import load
    model = load(model_path)
    proto = to_model(model.net, model.normalizer, model.class_names, opset)
    write_bytes(out_path, proto.SerializeToString())
    return model, proto
