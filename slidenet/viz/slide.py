"""The lecture's picture of convolution, animated: a filter sliding over a zero-padded input.

Each frame moves an F x F window (stride S) over the N x N input bordered by P zeros and fills
one more cell of the output, whose size is ``(N + 2P - F) / S + 1`` per side; the formula with
its numbers is on every frame. On small grids every cell shows its number (a small integer
input and filter drawn from a seeded generator), so each output is a dot product one can check
by hand. A geometry that does not fit raises the same `GeometryError` as `slidenet summary`.
"""
from dataclasses import dataclass

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.patches import Rectangle

from slidenet import geometry
from slidenet.errors import SlidenetError
from slidenet.progress import progress
from slidenet.storage import writing
from slidenet.viz import grid

MAX_FRAMES = 1024       # one per output position: 32 x 32 at stride 1 still fits
MAX_CELLS = 64          # padded input cells per side that can still be told apart
MAX_NUMBERED = 12       # padded input cells per side up to which every cell shows its number
FRAME_MS, LAST_FRAME_MS = 450, 2500

PAD_COLOUR, INPUT_COLOUR = "#e4e4e4", "#ffffff"
WINDOW, DONE, FILTER = "#d62728", "#cfe2f3", "#fde3c2"


@dataclass(frozen=True)
class Slide:
    """One N x N input, one F x F filter, stride S, padding P, and what they make.

    x: (N, N) ints, w: (F, F) ints, y: (out, out) the dot product at each position (no bias).
    """
    n: int
    f: int
    s: int
    p: int
    out: int
    x: np.ndarray
    w: np.ndarray
    y: np.ndarray

    @property
    def frames(self):
        return self.out * self.out

    def window(self, step):
        """(row, col) of the output cell made at `step` (row-major), and the top-left cell of its
        window in the padded input."""
        i, j = divmod(step, self.out)
        return (i, j), (i * self.s, j * self.s)


def plan(n, f, s, p, seed=0):
    """Check the geometry and work out the slide. Raises GeometryError (the summary's own
    teaching message) when (N + 2P - F) / S + 1 is not a positive whole number."""
    for name, value, least in (("--input", n, 1), ("--filter", f, 1), ("--stride", s, 1),
                               ("--pad", p, 0)):
        if not isinstance(value, (int, np.integer)) or value < least:
            raise SlidenetError(f"{name} must be a whole number of at least {least}, not {value}")
    if n + 2 * p > MAX_CELLS:
        raise SlidenetError(f"the padded input would be {n + 2 * p} cells wide; at most "
                            f"{MAX_CELLS} can be drawn: use a smaller --input or --pad")
    out = geometry.output_size(n, f, s, p, "input")
    if out * out > MAX_FRAMES:
        raise SlidenetError(f"{out} x {out} = {out * out:,} output positions would be as many "
                            f"frames; at most {MAX_FRAMES:,}: use a smaller --input or a larger "
                            "--stride")
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 3, size=(n, n))
    w = rng.integers(-1, 2, size=(f, f))
    xp = np.pad(x, p)
    y = np.array([[np.sum(xp[i * s:i * s + f, j * s:j * s + f] * w) for j in range(out)]
                  for i in range(out)])
    return Slide(n, f, s, p, out, x, w, y)


class _Drawing:
    """The figure of a slide, whose window, output cells and caption move with `show(step)`."""

    def __init__(self, slide):
        self.slide = slide
        m = slide.n + 2 * slide.p
        self.numbered = m <= MAX_NUMBERED
        # A fixed layout: the panels must not move between frames as the caption changes.
        self.fig = grid.NotebookFigure(figsize=(9.6, 4.8), dpi=grid.DPI)
        widths = [m, slide.f, slide.out] if self.numbered else [m, slide.out]
        axes = self.fig.subplots(1, len(widths), gridspec_kw={"width_ratios": widths})
        self.fig.subplots_adjust(left=0.02, right=0.98, top=0.86, bottom=0.15, wspace=0.08)
        self.input_ax, self.output_ax = axes[0], axes[-1]
        self._draw_input(m)
        if self.numbered:
            self._draw_filter(axes[1])
        self._draw_output()
        n, f, s, p = slide.n, slide.f, slide.s, slide.p
        self.fig.suptitle(f"a {f}x{f} filter, stride {s}, zero padding {p}, "
                          f"sliding over a {n}x{n} input", fontsize=12)
        self.fig.text(0.5, 0.075, f"output size (N + 2P - F) / S + 1 = "
                      f"{geometry.describe(n, f, s, p)}  ->  {slide.out} x {slide.out}",
                      ha="center", va="bottom", fontsize=10, family="monospace")
        self.caption = self.fig.text(0.5, 0.02, "", ha="center", va="bottom", fontsize=10,
                                     family="monospace")

    def _cells(self, ax, m_rows, m_cols, colours, title):
        """Coloured cells with grid lines; returns (image, [line collections])."""
        image = ax.imshow(colours, interpolation="nearest")
        # Line collections, not tick gridlines: ticks are slow to redraw on every frame.
        lines = [ax.hlines(np.arange(-0.5, m_rows), -0.5, m_cols - 0.5, color="#9a9a9a", lw=0.6),
                 ax.vlines(np.arange(-0.5, m_cols), -0.5, m_rows - 0.5, color="#9a9a9a", lw=0.6)]
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title, fontsize=10)
        return image, lines

    def _numbers(self, ax, values, colour="#222222", skip=None):
        size = max(6, min(12, 150 / max(values.shape)))
        return {(r, c): ax.text(c, r, str(values[r, c]), ha="center", va="center",
                                fontsize=size, color=colour)
                for r in range(values.shape[0]) for c in range(values.shape[1])
                if skip is None or not skip[r, c]}

    def _draw_input(self, m):
        s = self.slide
        padded = np.zeros((m, m), dtype=bool)
        padded[s.p:s.p + s.n, s.p:s.p + s.n] = True
        colours = np.where(padded[..., None], _rgb(INPUT_COLOUR), _rgb(PAD_COLOUR))
        self._cells(self.input_ax, m, m, colours,
                    f"input {s.n}x{s.n} + padding {s.p}  ->  {m}x{m}")
        self.input_ax.add_patch(Rectangle((s.p - 0.5, s.p - 0.5), s.n, s.n, fill=False,
                                          ec="#333333", lw=1.5))
        if self.numbered:
            self._numbers(self.input_ax, np.pad(s.x, s.p))
        self.window = Rectangle((-0.5, -0.5), s.f, s.f, fc=WINDOW, alpha=0.18, ec="none")
        self.window_edge = Rectangle((-0.5, -0.5), s.f, s.f, fill=False, ec=WINDOW, lw=2.5)
        self.input_ax.add_patch(self.window)
        self.input_ax.add_patch(self.window_edge)

    def _draw_filter(self, ax):
        f = self.slide.f
        self._cells(ax, f, f, np.broadcast_to(_rgb(FILTER), (f, f, 3)), f"filter {f}x{f}")
        self._numbers(ax, self.slide.w)
        ax.add_patch(Rectangle((-0.5, -0.5), f, f, fill=False, ec=WINDOW, lw=2.5))

    def _draw_output(self):
        out = self.slide.out
        self.output_image, self.output_lines = self._cells(
            self.output_ax, out, out, np.ones((out, out, 3)), f"output {out}x{out}")
        self.output_texts = self._numbers(self.output_ax, self.slide.y) if self.numbered else {}
        self.current = Rectangle((-0.5, -0.5), 1, 1, fill=False, ec=WINDOW, lw=2.5)
        self.output_ax.add_patch(self.current)

    def moving(self):
        """The artists that change between frames, in drawing order."""
        return ([self.output_image] + self.output_lines + list(self.output_texts.values())
                + [self.current, self.window, self.window_edge, self.caption])

    def show(self, step):
        """Draw the state after output cell `step` (row-major) has been filled."""
        s = self.slide
        (i, j), (r0, c0) = s.window(step)
        self.window.set_xy((c0 - 0.5, r0 - 0.5))
        self.window_edge.set_xy((c0 - 0.5, r0 - 0.5))
        done = (np.arange(s.frames) <= step).reshape(s.out, s.out)
        colours = np.where(done[..., None], _rgb(DONE), 1.0)
        colours[i, j] = _rgb(WINDOW) * 0.35 + 0.65
        self.output_image.set_data(colours)
        for (r, c), text in self.output_texts.items():
            text.set_visible(bool(done[r, c]))
        self.current.set_xy((j - 0.5, i - 0.5))
        where = (f"output ({i}, {j}) <- rows {r0}..{r0 + s.f - 1}, columns {c0}..{c0 + s.f - 1} "
                 "of the padded input")
        if self.numbered:
            where += f": sum of products = {s.y[i, j]}"
        self.caption.set_text(where)
        return self.fig


def _rgb(colour):
    return np.array(to_rgb(colour))


def slide_figure(n, f, s, p, step=None, seed=0):
    """A Figure of the slide after output cell `step` (default: the last, all filled)."""
    slide = plan(n, f, s, p, seed)
    last = slide.frames - 1
    return _Drawing(slide).show(last if step is None else min(max(step, 0), last))


def slide_frames(slide):
    """Yield one RGB PIL image per output position, in row-major order."""
    from PIL import Image
    drawing = _Drawing(slide)
    canvas = FigureCanvasAgg(drawing.fig)
    moving = drawing.moving()
    # Blitting: draw what never changes once, then per frame only the moving artists on top.
    for artist in moving:
        artist.set_animated(True)
    canvas.draw()
    background = canvas.copy_from_bbox(drawing.fig.bbox)
    for step in range(slide.frames):
        drawing.show(step)
        canvas.restore_region(background)
        for artist in moving:
            drawing.fig.draw_artist(artist)
        yield Image.frombuffer("RGBA", canvas.get_width_height(),
                               canvas.buffer_rgba()).convert("RGB")


def save_slide_gif(path, n, f, s, p, seed=0):
    """Write the animation to `path` as a looping GIF; returns the number of frames."""
    from PIL import Image
    slide = plan(n, f, s, p, seed)
    frames = []
    with progress(slide.frames, "frames", unit="frame") as bar:
        for frame in slide_frames(slide):
            frames.append(frame)
            bar.update()
    # One palette for all frames (taken from the last, where every colour appears) keeps the
    # colours from flickering between frames.
    palette = frames[-1].quantize(colors=64, method=Image.Quantize.MEDIANCUT)
    frames = [frame.quantize(palette=palette, dither=Image.Dither.NONE) for frame in frames]
    durations = [FRAME_MS] * (len(frames) - 1) + [LAST_FRAME_MS]
    writing.write_file(path, lambda fh: frames[0].save(
        fh, format="GIF", save_all=True, append_images=frames[1:], duration=durations, loop=0,
        disposal=1))
    return len(frames)
