"""What the filters of a layer look like: the weights themselves, drawn as small images.

A first-layer filter lives in pixel space (F_h x F_w x D over the image), so it is drawn as an
image: in colour when D = 3, each filter stretched to its own range because only its pattern,
not its scale, is visible in RGB; on one shared diverging scale with a colour bar when D = 1.
A deeper filter spans D activation maps, not colours, so it is drawn as a grid with one row per
filter and one column per input channel, all on one scale.

A grouped CONV (``g=G``) has filters of depth D / G: filter f reads only the D / G channels of
its group, f // (K / G). It is drawn as the same grid, one column per channel of the filter's
own group. A depthwise CONV (``DWCONV``, D / G = 1) has one map per filter: one tile each, on one
shared scale, filter f reading input channel f // M (M filters per channel).

An FC layer that reads a volume is drawn the same way: its weights for output o, reshaped to
the volume's (H, W, D), are a template of the whole input (the lecture's linear classifier).

Any CONV can be named, branch layers included (``conv3`` inside a residual block); a filter is
in pixel space when nothing on the layer's path from INPUT (`probe.info_path`, a merge's
branches included) slides a window or changes the shape.
"""
import numpy as np

from slidenet.errors import SlidenetError
from slidenet.viz import grid
from slidenet.notation.shapes import walk_infos
from slidenet.viz.probe import every_info, info_path, listing, named, pick_layer

MAX_FILTERS = 64        # rows of a deeper layer's grid
MAX_CHANNELS = 64       # columns of a deeper layer's grid


def filter_weights(net, layer=None):
    """(LayerInfo, W) for a CONV layer, or an FC layer reading a volume.

    layer: name (branch layers too) or position (default: the first such layer, branches
    included).
    W: (F_h, F_w, D, K), the layer's weights as filters; for an FC, (H, W, D, outputs).
    """
    images = {lay.name: lay.filter_images() for lay in net.every_layer()}
    drawable = [i for i in every_info(net) if images[i.name] is not None]
    names = listing(net.infos[1:], lambda i: images.get(i.name) is not None) or "none"
    if layer is None:
        if not drawable:
            raise SlidenetError("the net has no CONV layer (nor an FC reading a volume), so no "
                                "filters to draw")
        info = drawable[0]
    else:
        info = pick_layer(net, layer, accept=lambda i: i.spec.type.picture is not None,
                          why="to show its filters")
        if info not in drawable:
            raise SlidenetError(f"--layer {layer}: {info.name} reads a vector, not a volume, so "
                                f"its weights are not images; layers with filters: {names}")
    return info, images[info.name]


def filters_figure(net, layer=None):
    """A Figure of a layer's filters (see the module docstring for how each kind is drawn).

    Returns the Figure; `fig.tiles` maps the layer name to its `grid.Layout` (tile count, rows,
    columns), for tests and for readers who want tile k back.
    """
    info, w = filter_weights(net, layer)
    fh, fw, d, k = w.shape
    groups = info.input_shape[-1] // d      # 1 but for a grouped CONV (an FC's d is its input's)
    # Only layers that change the geometry (a window, or a new shape) move a filter out of
    # pixel space: those on its path, and those inside a merge on its path.
    before = list(walk_infos(info_path(net.infos, info.name)[1:-1]))
    first = not any(i.window is not None or i.output_shape != i.input_shape for i in before)
    what = info.spec.type.picture
    if groups > 1 and d == 1:
        # Depthwise: each filter is one F_h x F_w map over one input channel.
        shown_k = min(k, MAX_FILTERS * 4)
        tiles = np.moveaxis(w[:, :, 0, :shown_k], -1, 0)                    # (K, F_h, F_w)
        per = k // groups
        reads = "input channel f" if per == 1 else f"input channel f // {per}"
        cut = "" if shown_k == k else f"; first {shown_k} shown"
        note = f"depthwise: filter f reads only {reads}; one scale for all{cut}"
        cols = grid.columns(shown_k, widest=16)
        xlabel, ylabel, row_step = f"{what[:-1]} f (row + column)", "", None
    elif groups > 1:
        shown_k, shown_d = min(k, MAX_FILTERS), min(d, MAX_CHANNELS)
        tiles = np.transpose(w[:, :, :shown_d, :shown_k], (3, 2, 0, 1)).reshape(-1, fh, fw)
        cols = shown_d
        cut = "" if (shown_k, shown_d) == (k, d) else f", first {shown_k} x {shown_d} shown"
        note = (f"{groups} groups: row f reads input channels g*{d} .. g*{d}+{d - 1} of its "
                f"group g = f // {k // groups}; column: channel within the group{cut}")
        xlabel, ylabel, row_step = "channel within the group", what[:-1], 1
    elif first and d in (1, 3):
        # One tile per filter, in the image's own space.
        if d == 3:
            tiles = np.stack([grid.stretch(w[..., i]) for i in range(k)])  # (K, F_h, F_w, 3)
            note = "in RGB, each scaled to its own range"
        else:
            tiles = np.moveaxis(w[:, :, 0, :], -1, 0)                       # (K, F_h, F_w)
            note = "one scale for all"
        cols = grid.columns(k, widest=8)
        xlabel, ylabel, row_step = f"{what[:-1]} (row + column)", "", None
    else:
        shown_k, shown_d = min(k, MAX_FILTERS), min(d, MAX_CHANNELS)
        # Row f, column c: how filter f weighs input channel c.
        tiles = np.transpose(w[:, :, :shown_d, :shown_k], (3, 2, 0, 1)).reshape(-1, fh, fw)
        cols = shown_d
        cut = "" if (shown_k, shown_d) == (k, d) else f", first {shown_k} x {shown_d} shown"
        note = f"row: {what[:-1]}, column: input channel{cut}"
        xlabel, ylabel, row_step = "input channel", what[:-1], 1

    image_h = (len(tiles) + cols - 1) // cols * (fh + 1)
    width, height = grid.inches(image_h, cols * (fw + 1), max_width=9, max_height=8, scale=0.25)
    fig = grid.new_figure(max(width + 1.6, 4.5), height + 1.1)
    ax = fig.add_subplot()
    rgb = tiles.ndim == 4
    drawn, layout = grid.show(ax, tiles, cols, cmap="RdBu_r",
                              limits=None if rgb else grid.symmetric(tiles))
    grid.label_grid(ax, layout, xlabel, ylabel, row_step=row_step)
    ax.set_title(f"{named(net, info)}  {info.spec.text}: {k} {what} of {fh}x{fw}x{d}\n{note}",
                 fontsize=10)
    if not rgb:
        fig.colorbar(drawn, ax=ax, shrink=0.8, label="weight")
    fig.tiles = {info.name: layout}
    return fig
