"""Inputs that a filter likes most, found by gradient ascent on the image.

For channel c of layer L the objective is the mean of its activation map (for an FC layer, unit
c). Its gradient with respect to the input comes from the net's own backward pass: run the
layers up to L forward, inject d objective / d activation (1 / (H' W') on channel c's map,
zero elsewhere) as the upstream gradient at L, and run the same layers backward. One batch
holds one image per channel; in evaluation mode the images do not interact, so each gets only
its own channel's gradient.

Plain ascent makes high-frequency noise that no real image contains; three regularisers make
the result look like an image:
    L2 decay    x <- (1 - decay) x: small pixels are preferred, as in weight decay
    blur        every few steps a 3x3 blur removes what only single pixels carry
    jitter      each step sees the image shifted by up to `jitter` pixels, so a pattern must
                work at neighbouring positions too
and pixels are kept within what an image can hold (0..255 before normalisation).
"""
from dataclasses import dataclass

import numpy as np

from slidenet.errors import SlidenetError
from slidenet.viz import grid
from slidenet.progress import progress
from slidenet.viz.probe import has_filters, last_layer, path_layers, pick_layer

BLUR = np.array([0.25, 0.5, 0.25])      # separable 3x3 binomial kernel


@dataclass(frozen=True)
class Maximized:
    """Gradient-ascent results for some channels of one layer.

    images: normalised inputs (C, H, W, D); pixels: the same in [0, 1] before normalisation.
    start, end: each channel's objective (mean activation) on the starting noise and on the
    result.
    """
    info: object            # LayerInfo
    channels: np.ndarray    # (C,)
    images: np.ndarray      # (C, H, W, D)
    pixels: np.ndarray      # (C, H, W, D)
    start: np.ndarray       # (C,)
    end: np.ndarray         # (C,)


def objective_and_gradient(net, x, target, channels):
    """Each image's objective and its gradient with respect to the image.

    x: (C, H, W, D) normalised, image n for channel channels[n]. target: the layer, by its
    top-level position (INPUT 0) or its name (a branch layer: its path, `probe.path_layers`).
    Returns (objective (C,), gradient (C, H, W, D)). Overwrites the layers' parameter gradients.
    """
    layers = path_layers(net, target)
    out = x.astype(net.dtype, copy=False)
    for layer in layers:
        out = layer.forward(out, False)
    rows = np.arange(len(channels))
    per_unit = out[rows, ..., channels]                  # (C, H', W') or (C,)
    units = int(np.prod(per_unit.shape[1:]))
    objective = per_unit.reshape(len(channels), -1).mean(axis=1)
    grad = np.zeros_like(out)
    grad[rows, ..., channels] = 1.0 / units
    for layer in reversed(layers):
        grad = layer.backward(grad)   # right for the evaluation-mode forward above
    return objective, grad


def blur(x):
    """Each image of x (C, H, W, D) convolved with the 3x3 binomial kernel, edges repeated."""
    for axis in (1, 2):
        padded = np.concatenate([x.take([0], axis), x, x.take([-1], axis)], axis=axis)
        n = x.shape[axis]
        x = sum(w * padded.take(np.arange(k, k + n), axis) for k, w in enumerate(BLUR))
    return x


def maximize(net, normalizer, layer=None, channels=16, steps=200, lr=0.05, decay=0.01,
             blur_every=4, jitter=1, seed=0):
    """Gradient ascent on one input per channel (see the module docstring).

    layer: name or position (default: the last CONV). channels: how many, from channel 0.
    lr: step size, relative to each image's mean |gradient| so one value suits every layer.
    Returns a `Maximized`.
    """
    if layer is None:
        info = last_layer(net, has_filters, spatial=False)
        if info is None:
            raise SlidenetError("the net has no CONV layer; name a layer with --layer")
    else:
        info = pick_layer(net, layer, why="to maximise")
    depth = info.output_shape[-1]
    chosen = np.arange(min(channels, depth))
    rng = np.random.default_rng(seed)
    mean, std = normalizer.mean.astype(np.float64), normalizer.std.astype(np.float64)
    lo, hi = -mean / std, (1 - mean) / std        # pixel values 0 and 1, normalised
    x = np.clip(rng.normal(0.0, 0.1, (len(chosen),) + tuple(net.input_shape)), lo, hi)
    start, _ = objective_and_gradient(net, x, info.name, chosen)
    with progress(steps, f"maximize {info.name}", unit="step") as bar:
        for step in range(steps):
            dy, dx = rng.integers(-jitter, jitter + 1, size=2)
            shifted = np.roll(x, (dy, dx), axis=(1, 2))
            _, grad = objective_and_gradient(net, shifted, info.name, chosen)
            grad = np.roll(grad.astype(np.float64), (-dy, -dx), axis=(1, 2))
            scale = np.abs(grad).mean(axis=(1, 2, 3), keepdims=True) + 1e-12
            x = np.clip((1 - decay) * x + lr * grad / scale, lo, hi)
            if blur_every and (step + 1) % blur_every == 0:
                x = blur(x)
            bar.update()
    end, _ = objective_and_gradient(net, x, info.name, chosen)
    return Maximized(info, chosen, x, x * std + mean, start.astype(np.float64),
                     end.astype(np.float64))


def maximize_figure(result, class_names=None):
    """A Figure of the images found by `maximize`, one tile per channel, each tile scaled to its
    own range. class_names: name the units of the last layer by their class.
    Returns the Figure; `fig.tiles` maps the layer name to its `grid.Layout`."""
    info = result.info
    pixels = result.pixels
    tiles = np.stack([grid.stretch(p) for p in pixels])
    tiles = tiles[..., 0] if tiles.shape[-1] == 1 else tiles
    cols = grid.columns(len(tiles), widest=8)
    rows = (len(tiles) + cols - 1) // cols
    fig = grid.new_figure(1.45 * cols + 0.3, 1.6 * rows + 0.9)
    fig.suptitle(f"{info.name}  {info.spec.text}: inputs that maximise each channel's mean "
                 "activation\n(gradient ascent with L2 decay, blur and jitter; each image "
                 "scaled to its own range)", fontsize=9)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes:
        ax.set_axis_off()
    for ax, tile, c, a, b in zip(axes, tiles, result.channels, result.start, result.end):
        ax.imshow(tile, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        named = class_names is not None and c < len(class_names)
        name = f"class {class_names[c]}" if named else f"channel {c}"
        ax.set_title(f"{name}\n{a:.2g} -> {b:.3g}", fontsize=7)
    fig.tiles = {info.name: grid.Layout(len(tiles), rows, cols, *tiles.shape[1:3])}
    return fig
