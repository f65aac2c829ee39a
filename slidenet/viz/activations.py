"""An image passing through the net: the activation maps after every CONV, nonlinearity and POOL.

One row per layer, one tile per depth channel, one colour scale (and colour bar) per layer. A
layer with negative values is drawn on a diverging map centred on zero, so the sign shows;
after a RELU everything is >= 0 and a sequential map from 0 shows where the filter fired.

In a graph net every branch's layers get their rows too, before their merge's (as `slidenet
summary` lists them), each titled with its branch ("conv3 (branch 1 of add1)"): its own output,
computed through the branch (`Net.activations(x, branches=True)`). `layer` draws one layer only.
"""
import numpy as np

from slidenet.viz import grid
from slidenet.viz.probe import every_info, named, pick_layer, shows_maps

MAX_CHANNELS = 32       # per layer; enough to see what a layer does without a wall of tiles
ROW_WIDTH = 16          # tiles per row


def activation_maps(net, image, layer=None):
    """The maps of one image after each CONV, nonlinear, POOL and merge layer, branches included.

    image: (H, W, D) or (1, H, W, D), already normalised as the net expects.
    layer: None for every such layer; a name (branch layers too) or position for that one.
    Returns [(LayerInfo, maps (H', W', D'))]: the very arrays `net.activations(x, branches=True)`
    returns.
    """
    image = np.asarray(image)
    batch = image[None] if image.ndim == 3 else image
    infos = [info for info in every_info(net) if shows_maps(info)] if layer is None else \
        [pick_layer(net, layer, accept=shows_maps, why="for activation maps: its output has no "
                    "H x W x D maps")]
    by_name = dict(net.activations(batch, branches=True))
    return [(info, by_name[info.name][0]) for info in infos]


def activations_figure(net, image, pixels=None, caption="", max_channels=MAX_CHANNELS,
                       layer=None):
    """A Figure of `image` (normalised, (H, W, D)) and its activation maps, one row per layer.

    pixels: the uint8 (H, W, D) image to show at the top (default: the normalised one).
    layer: draw only this layer (a name, branch layers too, or a position).
    Returns the Figure; `fig.tiles` maps each layer name to its `grid.Layout`, and the axes of
    a layer carry its name as their label (`ax.get_label()`).
    """
    maps = activation_maps(net, image, layer)
    shown = [(info, np.moveaxis(a[..., :max_channels], -1, 0)) for info, a in maps]
    # Every row has room for the same number of tiles, so a tile is drawn the same size in every
    # layer, whatever its map's size and however few channels the layer has.
    cols = min(ROW_WIDTH, max((len(tiles) for _, tiles in shown), default=1))
    spans = [_span(tiles, cols) for _, tiles in shown]
    # Each row's height follows its span's aspect, so every tile keeps square pixels.
    ratios = [0.12] + [height / width for height, width in spans]
    width = 10.0
    fig = grid.new_figure(width, 1.0 + sum(width * 0.86 * r + 0.45 for r in ratios))
    axes = fig.subplots(len(ratios), 1, gridspec_kw={"height_ratios": ratios})

    top = np.asarray(image if pixels is None else pixels)
    if top.shape[-1] == 1:
        axes[0].imshow(top[..., 0], cmap="gray", interpolation="nearest",
                       **({"vmin": 0, "vmax": 255} if pixels is not None else {}))
    else:
        axes[0].imshow(grid.stretch(top) if pixels is None else top, interpolation="nearest")
    axes[0].set_title(f"input  {'x'.join(map(str, top.shape))}  {caption}".rstrip(), fontsize=9)
    axes[0].set_axis_off()

    fig.tiles = {}
    for ax, (info, tiles), (height, width) in zip(axes[1:], shown, spans):
        negative = tiles.min() < 0
        limits = grid.symmetric(tiles) if negative else (0.0, max(float(tiles.max()), 1e-6))
        drawn, layout = grid.show(ax, tiles, cols, cmap="RdBu_r" if negative else "viridis",
                                  limits=limits)
        ax.set_xlim(-0.5, width - 0.5)          # a row of fewer tiles leaves the rest empty
        ax.set_ylim(height - 0.5, -0.5)
        grid.label_grid(ax, layout, "", "channel", fontsize=6)
        depth = info.output_shape[2]
        cut = f"  (first {len(tiles)} of {depth} channels)" if len(tiles) < depth else ""
        ax.set_title(f"{named(net, info)}  {info.spec.text}  ->  "
                     f"{'x'.join(map(str, info.output_shape))}{cut}", fontsize=9, loc="left")
        ax.set_label(info.name)
        fig.colorbar(drawn, ax=ax, fraction=0.025, pad=0.01)
        fig.tiles[info.name] = layout
    return fig


def _span(tiles, cols, gap=1):
    """(height, width) in map pixels of a row block of `cols` columns holding `tiles` (n, h, w)."""
    n, h, w = tiles.shape[:3]
    rows = -(-n // cols)
    return rows * (h + gap) - gap, cols * (w + gap) - gap
