"""Models in and out of slidenet, through ONNX, the exchange format of the field.

    onnx_graph    the graph an export writes into (`Graph`), the layout decision, and
                  `require_onnx` (the `onnx` extra is imported only when it is used)
    onnx_export   a net -> an ONNX model: `to_model`, `to_bytes`, `export_file`
    onnx_file     an untrusted .onnx file -> its graph and its tensors, sizes checked first
    onnx_import   an ONNX graph of the lecture's layers -> a slidenet net (`read_onnx`)
    onnx_ops      one handler per ONNX op type, and the values a graph is read into

Layout: slidenet holds images (batch, height, width, depth) and ONNX's Conv and pools want
(batch, depth, height, width). An export transposes once, at the input, and writes every
weight in ONNX's layout; an import does the reverse. See docs/interop.md.
"""
