"""Tiling many small images into one, scaling values for display, and writing figures.

Every picture that shows many maps or filters lays them out with `mosaic`: one image with a gap
between tiles, drawn by a single ``imshow`` so one colour bar holds for all tiles and a figure of
hundreds of tiles stays fast. `Layout` records where each tile went, so tests (and readers) can
take tile k back out with `Layout.tile`.
"""
import io
import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure

from slidenet.errors import SlidenetError
from slidenet.storage import writing

DPI = 100
BACKGROUND = "#e8e8e8"      # the gaps between tiles, and tiles beyond the last one


@dataclass(frozen=True)
class Layout:
    """How `count` tiles of tile_h x tile_w sit in a grid of rows x cols, `gap` pixels apart."""
    count: int
    rows: int
    cols: int
    tile_h: int
    tile_w: int
    gap: int = 1

    def origin(self, k):
        """(top, left) pixel of tile k (row-major) in the mosaic."""
        row, col = divmod(k, self.cols)
        return row * (self.tile_h + self.gap), col * (self.tile_w + self.gap)

    def tile(self, image, k):
        """Tile k of a mosaic `image` (rows*(h+gap)-gap, cols*(w+gap)-gap[, 3]) -> (h, w[, 3])."""
        if not 0 <= k < self.count:
            raise IndexError(f"tile {k} of {self.count}")
        top, left = self.origin(k)
        return image[top:top + self.tile_h, left:left + self.tile_w]

    def centres(self):
        """Pixel centres of the columns (x) and of the rows (y), for tick labels."""
        xs = [c * (self.tile_w + self.gap) + (self.tile_w - 1) / 2 for c in range(self.cols)]
        ys = [r * (self.tile_h + self.gap) + (self.tile_h - 1) / 2 for r in range(self.rows)]
        return xs, ys


def columns(count, widest=16):
    """Columns for `count` tiles: one row up to `widest` tiles, a near-square grid beyond."""
    return max(1, min(widest, math.ceil(math.sqrt(count)) if count > widest else count))


def mosaic(tiles, cols, gap=1, fill=np.nan):
    """Tiles side by side, row-major.

    tiles: (n, h, w) or (n, h, w, 3); cols: tiles per row.
    Returns (image, Layout): image is float (rows*(h+gap)-gap, cols*(w+gap)-gap[, 3]) with `fill`
    in the gaps and after the last tile (NaN shows as the colour map's "bad" colour).
    """
    tiles = np.asarray(tiles)
    n, h, w = tiles.shape[:3]
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    layout = Layout(n, rows, cols, h, w, gap)
    image = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap) + tiles.shape[3:], fill,
                    dtype=np.float64)
    for k in range(n):
        top, left = layout.origin(k)
        image[top:top + h, left:left + w] = tiles[k]
    return image, layout


def stretch(a):
    """Scale `a` linearly to [0, 1] over its own range; a constant array becomes 0.5."""
    a = np.asarray(a, dtype=np.float64)
    lo, hi = np.nanmin(a), np.nanmax(a)
    if hi - lo < 1e-12:
        return np.full_like(a, 0.5)
    return (a - lo) / (hi - lo)


def symmetric(a):
    """(-m, m) with m the largest |value| of `a`: zero sits in the middle of a diverging map."""
    m = float(np.nanmax(np.abs(a))) if np.size(a) else 0.0
    return (-m, m) if m > 0 else (-1.0, 1.0)


def inches(h_px, w_px, max_width=9.0, max_height=7.0, scale=0.12):
    """(width, height) in inches for an h_px x w_px picture: `scale` inches per pixel, shrunk
    to fit max_width x max_height, so tiny filters get big pixels and big mosaics still fit."""
    s = min(scale, max_width / w_px, max_height / h_px)
    return w_px * s, h_px * s


class NotebookFigure(Figure):
    """A matplotlib Figure that Jupyter shows as a PNG, with no pyplot and no `%matplotlib`:
    without pyplot, IPython has no formatter for a plain Figure and would print its repr."""

    def _repr_png_(self):
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", dpi=DPI, facecolor="white")
        return buffer.getvalue()


def new_figure(width, height):
    """A Figure of width x height inches; no pyplot, so no global state and no display but a
    notebook's (`NotebookFigure`)."""
    return NotebookFigure(figsize=(width, height), dpi=DPI, layout="constrained")


def show(ax, tiles, cols, cmap="viridis", limits=None, gap=1, between=BACKGROUND):
    """Draw a mosaic of `tiles` on `ax`. Returns (AxesImage, Layout).

    tiles: (n, h, w) values mapped through `cmap` between `limits` (default: their min and max),
    or (n, h, w, 3) RGB in [0, 1]. The gaps show in the colour `between`.
    """
    image, layout = mosaic(tiles, cols, gap, fill=np.nan)
    if image.ndim == 3:
        image = np.where(np.isnan(image), np.array(to_rgb(between)), image)
        drawn = ax.imshow(image, interpolation="nearest")
    else:
        colours = matplotlib.colormaps[cmap].with_extremes(bad=between)
        lo, hi = limits if limits is not None else (np.nanmin(image), np.nanmax(image))
        drawn = ax.imshow(image, cmap=colours, vmin=lo, vmax=hi, interpolation="nearest")
    ax.set_facecolor(between)
    return drawn, layout


def label_grid(ax, layout, xlabel, ylabel, row_step=None, fontsize=7):
    """Tick each column with its index and each row with `row_step` times its index.

    With row_step = cols (the default) a tile's number is its row tick plus its column tick.
    A single row needs no row ticks and no row label.
    """
    xs, ys = layout.centres()
    step = layout.cols if row_step is None else row_step
    ax.set_xticks(xs, [str(c) for c in range(layout.cols)], fontsize=fontsize)
    ax.set_xlabel(xlabel, fontsize=fontsize + 1)
    if layout.rows > 1:
        ax.set_yticks(ys, [str(r * step) for r in range(layout.rows)], fontsize=fontsize)
        ax.set_ylabel(ylabel, fontsize=fontsize + 1)
    else:
        ax.set_yticks([])
    ax.tick_params(length=0, pad=1)
    for side in ax.spines.values():
        side.set_visible(False)


def save(fig, path):
    """Write `fig` to `path` atomically (`slidenet.storage.writing`), in the format its suffix names
    (PNG without one), creating the folder. A previous file survives any failure."""
    path = Path(path)
    kind = path.suffix[1:].lower() or "png"
    formats = fig.canvas.get_supported_filetypes()
    if kind not in formats:
        raise SlidenetError(f"cannot write {path}: matplotlib writes {', '.join(sorted(formats))}, "
                            f"not .{kind}")
    return writing.write_file(path, lambda fh: fig.savefig(fh, format=kind, dpi=DPI,
                                                            facecolor="white"))
