"""What the live page shows, worked out from one model: no web server in here.

    explainer = Explainer(slidenet.load("runs/demo/best.npz"))
    explainer.predict(pixels)                   # {"classes", "probabilities"}
    explainer.look(pixels)                      # the same, plus every layer's output
    explainer.unit(pixels, "conv1", 3, 4, 2)    # where one unit comes from
    explainer.slide(7, 3, 2, 1)                 # a filter sliding over a padded input
    explainer.patches("conv4", 5)               # the test images that excite a channel most

`pixels` is one uint8 image (H, W, D) of the model's INPUT size (`slidenet.data.decode_image`
makes one from an upload). Every method returns a plain, JSON-ready dict.

The net's kernels share worker threads and scratch buffers, and a forward pass recycles the
last one's arrays, so one lock serialises every use of the net, and whatever leaves a method
is copied out while the lock is held.
"""
import base64
import io
import threading

import numpy as np

from slidenet.errors import SlidenetError
from slidenet.layers import Layer
from slidenet.notation.shapes import walk_infos
from slidenet.viz.patches import fields, top_patches
from slidenet.viz.probe import has_filters, shows_maps

PATCHES = 9                 # patches shown per channel, as `slidenet viz patches` draws them
SLIDE_LIMITS = {"n": ("N", 1, 16), "f": ("F", 1, 16), "s": ("S", 1, 8), "p": ("P", 0, 4)}


def floats(array):
    """An array as base64 of its little-endian float32 bytes, C order (the page reads it
    with a Float32Array)."""
    return base64.b64encode(np.ascontiguousarray(array, dtype="<f4").tobytes()).decode("ascii")


def png_uri(pixels):
    """uint8 (H, W, 1 or 3) as a data:image/png URI."""
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def explains(layer):
    """Whether the layer's kind explains its units (overrides `Layer.explain`)."""
    return type(layer).explain is not Layer.explain


class Explainer:
    """One model, and everything the page asks of it.

    model: a `slidenet.Model`; data: the data spec whose test split feeds the top patches
    (default: the one the model was trained on, `model.meta["data"]`).
    """

    def __init__(self, model, data=None):
        self.model = model
        self.net = model.net
        self.data = data or model.meta.get("data")
        self.lock = threading.Lock()
        self._dataset = None            # the loaded test split, or the DataError's message
        self._patches = {}              # layer name -> viz.patches.Patches

    # ---- what the page needs to lay itself out ----

    def describe(self):
        """The model: pattern, INPUT, classes, and per layer what the page can show of it."""
        by_index = {layer.info.index: layer for layer in self.net.layers}
        layers = []
        for info in self.net.infos[1:]:
            spatial = len(info.output_shape) == 3
            layers.append({
                "name": info.name, "index": info.index, "text": _text(info),
                "input_shape": list(info.input_shape), "output_shape": list(info.output_shape),
                "size_formulas": list(info.size_formulas), "params": info.params_formula,
                "receptive_field": list(info.receptive_field), "spatial": spatial,
                "maps": shows_maps(info), "filters": has_filters(info),
                "explains": explains(by_index[info.index])})
        # The training images' mean brightness (0..1): the page suggests inverting an image
        # far from it, as `slidenet predict` does.
        brightness = float(np.mean(self.model.normalizer.mean))
        return {"pattern": self.net.pattern, "input_shape": list(self.model.input_shape),
                "classes": self.model.class_names, "data": self.data,
                "brightness": brightness,
                "params": sum(info.params for info in walk_infos(self.net.infos)),
                "layers": layers}

    # ---- one image ----

    def predict(self, pixels):
        """{"classes", "probabilities"}: exactly `Model.predict` of the image."""
        with self.lock:
            probs = self.model.predict(pixels[None])[0]
        return {"classes": self.model.class_names, "probabilities": probs.tolist()}

    def look(self, pixels):
        """The prediction, the image as the net sees it, and every layer's output.

        "input": the uint8 pixels (H, W, D) as floats(); "layers": per layer its "name",
        "shape" and "data": floats() of the output in (D, H, W) order for an H x W x D output
        (one map after another), else (n,); "low" and "high": the layer's smallest and largest
        number (one colour scale per layer).
        """
        with self.lock:
            probs = self.model.predict(pixels[None])[0]
            outputs = self.net.activations(self.model.normalizer.normalize(pixels[None]))
            layers = []
            for name, out in outputs[1:]:
                one = out[0]
                maps = np.moveaxis(one, -1, 0) if one.ndim == 3 else one
                layers.append({"name": name, "shape": list(one.shape), "data": floats(maps),
                               "low": float(one.min()), "high": float(one.max())})
        return {"classes": self.model.class_names, "probabilities": probs.tolist(),
                "input": floats(pixels), "input_shape": list(pixels.shape), "layers": layers}

    def unit(self, pixels, layer, row, col, channel):
        """Where the unit at (row, col), depth `channel` of `layer` comes from.

        Returns {"layer", "index", "row", "col", "channel", "activation" (the number
        `net.activations` holds there), "field" ({"rows", "cols"}: the [start, stop) input
        pixels it sees, possibly past the edge), "explanation" (the kind's `Layer.explain`
        dict, or None)}. Raises SlidenetError for a layer or position that does not exist.
        """
        info = self._layer(layer)
        shape = info.output_shape
        spatial = len(shape) == 3
        limits = (shape[0], shape[1], shape[2]) if spatial else (1, 1, shape[0])
        for what, value, limit in zip(("row", "col", "channel"), (row, col, channel), limits):
            if not 0 <= value < limit:
                raise SlidenetError(f"{info.name} {'x'.join(map(str, shape))} has no {what} "
                                    f"{value}: it runs from 0 to {limit - 1}")
        if spatial:
            height, width = fields(self.net.infos, info.index)
            field = {"rows": list(height.window(row)), "cols": list(width.window(col))}
        else:
            h, w = self.model.input_shape[:2]       # an FC unit sees the whole image
            field = {"rows": [0, h], "cols": [0, w]}
        layer_object = self.net.layers[info.index - 1]
        with self.lock:
            outputs = self.net.activations(self.model.normalizer.normalize(pixels[None]))
            x = outputs[info.index - 1][1][0]
            out = outputs[info.index][1][0]
            activation = float(out[row, col, channel] if spatial else out[channel])
            explanation = layer_object.explain(x, row, col, channel)
        return {"layer": info.name, "index": info.index, "text": info.spec.text,
                "row": row, "col": col, "channel": channel, "activation": activation,
                "field": field, "explanation": explanation}

    # ---- no image ----

    @staticmethod
    def slide(n, f, s, p):
        """A filter sliding over a padded input, as `slidenet viz slide` draws it: {"n", "f",
        "s", "p", "out", "formula" ('(7 + 2*1 - 3) / 2 + 1 = 4'), "x" (N x N), "w" (F x F),
        "y" (out x out: the dot product at each position)}. A geometry that does not tile
        raises the summary's own GeometryError."""
        from slidenet import geometry
        from slidenet.viz.slide import plan
        for key, value in zip("nfsp", (n, f, s, p)):
            name, low, high = SLIDE_LIMITS[key]
            if not low <= value <= high:
                raise SlidenetError(f"{name} must be a whole number from {low} to {high}, "
                                    f"not {value}")
        slide = plan(n, f, s, p)
        return {"n": n, "f": f, "s": s, "p": p, "out": slide.out,
                "formula": geometry.describe(n, f, s, p), "x": slide.x.tolist(),
                "w": slide.w.tolist(), "y": slide.y.tolist()}

    def patches(self, layer, channel):
        """The PATCHES test images that excite `channel` of `layer` most, as `slidenet viz
        patches` finds them (worked out for the whole layer on first use, then cached).

        Returns {"layer", "channel", "field" ([r_h, r_w]), "data", "patches": [{"image",
        "value", "row", "col", "label", "uri"}]}. Raises SlidenetError when the data set cannot
        be loaded or the layer has no H x W positions.
        """
        info = self._layer(layer, spatial=True)
        depth = info.output_shape[2]
        if not 0 <= channel < depth:
            raise SlidenetError(f"{info.name} has channels 0 to {depth - 1}, not {channel}")
        dataset = self._test_split()
        with self.lock:
            if info.name not in self._patches:
                self._patches[info.name] = top_patches(
                    self.net, dataset.x_test, self.model.normalizer, info.name, channels=depth,
                    per_channel=PATCHES)
            found = self._patches[info.name]
        names = list(dataset.class_names)
        shown = []
        for rank in range(found.values.shape[1]):
            image = int(found.images[channel, rank])
            row, col = (int(v) for v in found.positions[channel, rank])
            shown.append({"image": image, "value": float(found.values[channel, rank]),
                          "row": row, "col": col, "label": names[int(dataset.y_test[image])],
                          "uri": png_uri(found.crops[channel, rank])})
        return {"layer": info.name, "channel": channel, "data": dataset.spec,
                "field": [found.field[0].size, found.field[1].size], "patches": shown}

    def _layer(self, name, spatial=False):
        """The LayerInfo of the layer called `name` ("conv2"); with `spatial`, one whose output
        has H x W positions. SlidenetError naming the layers that would do otherwise."""
        infos = [info for info in self.net.infos[1:]
                 if not spatial or len(info.output_shape) == 3]
        found = [info for info in self.net.infos[1:] if info.name == str(name).strip().lower()]
        choices = ", ".join(info.name for info in infos)
        if not found:
            raise SlidenetError(f"{name!r}: no such layer; choose one of: {choices}")
        if found[0] not in infos:
            raise SlidenetError(f"{found[0].name} ({found[0].spec.text}) has no H x W positions "
                                f"for patches; choose one of: {choices}")
        return found[0]

    def _test_split(self):
        """The data set of the patches, loaded once; its DataError is kept and raised again."""
        with self.lock:
            if self._dataset is None:
                try:
                    if not self.data:
                        raise SlidenetError("the model file does not say which data it was "
                                            "trained on")
                    # At the model's size: stretched when it was trained with --resize.
                    dataset = self.model.load_data(self.data)
                    if len(dataset.y_test) == 0:
                        raise SlidenetError(f"{dataset.spec} has no test split")
                    self._dataset = dataset
                except SlidenetError as err:
                    self._dataset = (f"the top patches need the test images the model was "
                                     f"trained on, and they cannot be loaded: {err}; start "
                                     "slidenet serve with --data SPEC")
            found = self._dataset
        if isinstance(found, str):
            raise SlidenetError(found)
        return found


def _text(info):
    """A layer as the pattern writes it; a merge with its branches: "{ CONV(8) | ID } -> ADD"."""
    if not info.branches:
        return info.spec.text
    branches = " | ".join(" -> ".join(_text(child) for child in branch)
                          for branch in info.branches)
    return f"{{ {branches} }} -> {info.spec.text}"
