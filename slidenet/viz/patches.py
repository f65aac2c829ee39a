"""What each neuron responds to: the image patches that activate a channel most.

A unit at output position (i, j) of a layer sees only a window of the input, its receptive
field. Along each axis the window follows from the specs: with `jump` the input pixels between
neighbouring units and `offset` the first input pixel of unit 0 (negative when it starts in the
padding), each CONV or POOL with filter F, stride S and padding P maps

    offset_out = offset_in - P * jump_in
    size_out   = size_in + (F - 1) * jump_in
    jump_out   = jump_in * S

starting from (offset, size, jump) = (0, 1, 1) on the input. Unit i then sees input pixels
offset + i * jump up to offset + i * jump + size - 1.

For each channel, every image contributes its strongest position (the first in row-major order
on ties), and the images with the highest such values win (the lower image index on ties), so
the patches come from different images instead of one image's neighbouring positions.
"""
from dataclasses import dataclass

import numpy as np

from slidenet.errors import SlidenetError
from slidenet.viz import grid
from slidenet.progress import progress
from slidenet.viz.probe import (batched, forward_to, has_filters, info_path, last_layer,
                                 named, pick_layer)

OUTSIDE = 128           # crop value where the field reaches past the image (grey)
GAP = "#5b8fc7"         # between patches


@dataclass(frozen=True)
class Field:
    """The receptive field of a layer's units along one axis (see the module docstring)."""
    offset: int
    size: int
    jump: int

    def window(self, i):
        """(start, stop) input pixels seen by unit i; stop is exclusive, either may be outside."""
        start = self.offset + i * self.jump
        return start, start + self.size


def fields(infos, target):
    """(height Field, width Field) of the units of layer `target` of `infos` (a net's infos,
    INPUT first): its top-level position (INPUT is 0) or its name, branch layers included
    (the walk follows its path, `probe.info_path`).

    Through a merge (ADD, CONCAT), a unit sees what any of its branches sees: the union of the
    branches' fields, from the first pixel any of them starts at to the last any ends at. Its
    size is the largest branch's field, as the summary's receptive field column has it, when
    the branches' windows nest (centred padding); `slidenet summary` and these windows agree
    on every zoo net (tested). (A CONCAT channel sees only its own branch's field, which lies
    inside that union.) Branches whose units step by different jumps (an unusual net: a
    strided branch beside an unpadded one that shrinks as much) keep the largest jump, and
    the union is then exact for unit 0 only, as the summary's column is."""
    path = infos[:target + 1] if isinstance(target, int) else info_path(infos, target)
    if not path:
        raise SlidenetError(f"no layer {target!r} in this net")
    offset, size, jump = _walk(path[1:], [0, 0], [1, 1], [1, 1])
    return Field(offset[0], size[0], jump[0]), Field(offset[1], size[1], jump[1])


def _walk(infos, offset, size, jump):
    for info in infos:
        if info.branches:
            ends = [_walk(branch, list(offset), list(size), list(jump))
                    for branch in info.branches]
            for a in (0, 1):
                start = min(end[0][a] for end in ends)
                stop = max(end[0][a] + end[1][a] for end in ends)
                offset[a], size[a], jump[a] = start, stop - start, max(end[2][a] for end in ends)
            continue
        window = info.window            # None for a layer that slides no window
        if window is not None:
            for a in (0, 1):
                offset[a] -= window.pad[a] * jump[a]
                size[a] += (window.size[a] - 1) * jump[a]
                jump[a] *= window.stride[a]
    return offset, size, jump


def crop(image, rows, cols, fill=OUTSIDE):
    """image[rows, cols] for windows that may reach past the border.

    image: (H, W, D); rows, cols: (start, stop) possibly outside [0, H) / [0, W).
    Returns (rows stop - start, cols stop - start, D), `fill` where the window is outside.
    """
    h, w = image.shape[:2]
    out = np.full((rows[1] - rows[0], cols[1] - cols[0]) + image.shape[2:], fill, image.dtype)
    r0, r1 = max(rows[0], 0), min(rows[1], h)
    c0, c1 = max(cols[0], 0), min(cols[1], w)
    if r0 < r1 and c0 < c1:
        out[r0 - rows[0]:r1 - rows[0], c0 - cols[0]:c1 - cols[0]] = image[r0:r1, c0:c1]
    return out


@dataclass(frozen=True)
class Patches:
    """The top patches of some channels of one layer.

    channels: (C,) channel numbers. For channel c = channels[n] and rank r (0 strongest):
    values[n, r] the activation, images[n, r] the index into x, positions[n, r] the (i, j)
    output position, crops[n, r] the uint8 (r_h, r_w, D) input window (OUTSIDE grey beyond the
    image). There are at most as many ranks as images.
    """
    info: object            # LayerInfo
    field: tuple            # (height Field, width Field)
    channels: np.ndarray    # (C,)
    values: np.ndarray      # (C, k)
    images: np.ndarray      # (C, k)
    positions: np.ndarray   # (C, k, 2)
    crops: np.ndarray       # (C, k, r_h, r_w, D) uint8
    title: str = ""         # the layer as titles name it: "conv3 (branch 1 of add1)"


def strongest(net, x, normalizer, target, batch_size=200):
    """Each image's strongest activation of each channel at layer `target` (a top-level
    position, or a name: branch layers too).

    x: uint8 (N, H, W, D). Returns (values (N, D'), positions (N, D', 2)) where positions are
    the (i, j) of the first maximum in row-major order.
    """
    values, positions = [], []
    with progress(len(x), "patches", unit="img") as bar:
        for part in batched(len(x), batch_size):
            act = forward_to(net, normalizer.normalize(x[part]), target)     # (B, H', W', D')
            b, ho, wo, d = act.shape
            flat = act.reshape(b, ho * wo, d)
            arg = flat.argmax(axis=1)                                       # (B, D')
            values.append(np.take_along_axis(flat, arg[:, None, :], axis=1)[:, 0, :])
            positions.append(np.stack(np.divmod(arg, wo), axis=-1))
            bar.update(b)
    return np.concatenate(values), np.concatenate(positions)


def top_patches(net, x, normalizer, layer=None, channels=16, per_channel=9, batch_size=200):
    """The `per_channel` strongest patches of the first `channels` channels of a layer.

    x: uint8 (N, H, W, D) images the net can read; normalizer: the model's.
    layer: name (branch layers too) or position of a layer with an H x W x D output
    (default: the last CONV, branches included).
    """
    if layer is None:
        info = last_layer(net, has_filters) or last_layer(net)
        if info is None:
            raise SlidenetError("the net has no layer with an H x W output, so no patches")
    else:
        info = pick_layer(net, layer, spatial=True, why="for patches: it has no H x W positions")
    values, positions = strongest(net, x, normalizer, info.name, batch_size)
    chosen = np.arange(min(channels, values.shape[1]))
    # A stable sort on -value keeps the lower image index first on ties.
    order = np.argsort(-values[:, chosen], axis=0, kind="stable")[:per_channel].T   # (C, k)
    field = fields(net.infos, info.name)
    crops = np.array([[crop(x[img], field[0].window(positions[img, c, 0]),
                            field[1].window(positions[img, c, 1])) for img in order[n]]
                      for n, c in enumerate(chosen)])
    return Patches(info, field, chosen, np.take_along_axis(values[:, chosen].T, order, axis=1),
                   order, positions[order, chosen[:, None]], crops, named(net, info))


def patches_figure(patches, class_names=None, labels=None):
    """A Figure with one block of top patches per channel (strongest first, row-major).

    patches: from `top_patches`. labels (N,) of the images and class_names, when given, add to
    each block's title the class most of its images belong to.
    Returns the Figure; `fig.tiles` maps "<layer> channel <c>" to that block's `grid.Layout`.
    """
    info, (fh, fw) = patches.info, patches.field
    count = len(patches.channels)
    cols = grid.columns(count, widest=4)
    rows = (count + cols - 1) // cols
    fig = grid.new_figure(2.2 * cols + 0.4, 2.35 * rows + 0.9)
    fig.suptitle(f"{patches.title or info.name}  {info.spec.text}: the {patches.values.shape[1]} strongest "
                 f"image patches per channel\nreceptive field {fh.size}x{fw.size} pixels "
                 "(grey: beyond the image edge)", fontsize=10)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    fig.tiles = {}
    for ax in axes[count:]:
        ax.set_axis_off()
    for n, (ax, c) in enumerate(zip(axes, patches.channels)):
        crops = patches.crops[n] / 255.0                                    # (k, r_h, r_w, D)
        tiles = crops[..., 0] if crops.shape[-1] == 1 else crops
        # Coloured gaps: grey and white belong to the images.
        _, layout = grid.show(ax, tiles, grid.columns(len(tiles), widest=3), cmap="gray",
                              limits=(0, 1), between=GAP)
        ax.set_xticks([])
        ax.set_yticks([])
        title = f"channel {c}   max {patches.values[n, 0]:.3g}"
        if labels is not None and class_names is not None:
            title += f"\n{_majority(labels[patches.images[n]], class_names)}"
        ax.set_title(title, fontsize=8)
        fig.tiles[f"{info.name} channel {c}"] = layout
    return fig


def _majority(labels, class_names):
    """'mostly 7 (6 of 9)': the most common class among the images of a channel's patches."""
    counts = np.bincount(labels, minlength=len(class_names))
    best = int(counts.argmax())
    return f"mostly {class_names[best]} ({counts[best]} of {len(labels)})"
