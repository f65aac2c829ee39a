"""A net's summary, as a table to read or as JSON, from `slidenet.notation.shapes.infer`'s LayerInfos.

Only shapes and counts are involved, no weights, so even a VGG-16-sized net answers at once.
A net with branches shows each branch's layers indented under "branch 1 of add1", before the
merge's own row, which sums up how the branches meet (``16 + 16 = 32`` channels for CONCAT).
`summary_html` is the same table for Jupyter (`Net._repr_html_`); `history_html` a training
history's table (`Model._repr_html_`). `summarize` is what `slidenet summary --json` prints and what the playground's POST /api/summary
answers: one function, so the two cannot drift apart.
"""
import html
import math

from slidenet.notation.shapes import walk_infos

_COLUMNS = ("layer", "pattern", "output", "parameters", "output size (N + 2P - F) / S + 1",
            "receptive field", "multiply-adds", "memory")
_RIGHT = {"multiply-adds", "memory"}   # numbers line up on their last digit


def summary_text(infos):
    """One aligned row per layer, then the totals for one image."""
    rows = [_COLUMNS] + list(_rows(infos, 0))
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    lines = []
    for row in rows:
        cells = [cell.rjust(width) if title in _RIGHT else cell.ljust(width)
                 for cell, width, title in zip(row, widths, _COLUMNS)]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "-" * len(lines[0]))
    lines += _notes(infos)
    totals = summary_json(infos)
    lines += [
        "",
        f"total parameters:        {totals['total_params']:,}"
        f" ({_bytes(totals['total_params'] * 4)} at float32)",
        f"total multiply-adds:     {totals['total_madds']:,} per image",
        f"total activation memory: {_bytes(totals['total_activation_bytes'])} per image"
        " at float32",
    ]
    return "\n".join(lines)


def summarize(pattern, variables=None, skip_optional=False):
    """The JSON summary of a pattern: parse, infer every shape, `summary_json`.

    Raises PatternError (with the column at fault) or another SlidenetError for a pattern
    that does not parse or build.
    """
    from slidenet.notation.pattern import parse
    from slidenet.notation.shapes import infer
    return summary_json(infer(parse(pattern, variables, skip_optional=skip_optional), pattern))


def summary_html(infos):
    """The table of `summary_text` as an HTML table (every cell escaped), then its notes and
    totals, for a notebook."""
    esc = html.escape
    head = "".join(f"<th style='text-align:left'>{esc(title)}</th>" for title in _COLUMNS)
    style = {title: f"text-align:{'right' if title in _RIGHT else 'left'};padding:0 0.6em;"
                    "font-family:monospace;white-space:pre" for title in _COLUMNS}
    body = "".join("<tr>" + "".join(f"<td style='{style[title]}'>{esc(cell)}</td>"
                                    for cell, title in zip(row, _COLUMNS)) + "</tr>"
                   for row in _rows(infos, 0))
    totals = summary_json(infos)
    notes = [line.strip() for line in _notes(infos) if line.strip() and line != "notes:"]
    foot = "".join(f"<li>{esc(line)}</li>" for line in notes)
    return (f"<table class='slidenet-summary'><thead><tr>{head}</tr></thead><tbody>{body}"
            f"</tbody></table>" + (f"<p>notes:</p><ul>{foot}</ul>" if foot else "") +
            f"<p>total parameters: {totals['total_params']:,} "
            f"({esc(_bytes(totals['total_params'] * 4))} at float32); "
            f"multiply-adds: {totals['total_madds']:,} per image; activation memory: "
            f"{esc(_bytes(totals['total_activation_bytes']))} per image</p>")


_HISTORY = ("epoch", "loss", "accuracy", "val_accuracy", "val_loss", "lr", "seconds")


def history_html(history):
    """A training history (one dict per epoch, as history.json holds) as an HTML table."""
    if not history:
        return "<p>not trained yet: no history</p>"
    head = "".join(f"<th>{name}</th>" for name in _HISTORY)
    rows = "".join("<tr>" + "".join(f"<td style='text-align:right'>{_number(entry.get(name))}</td>"
                                    for name in _HISTORY) + "</tr>"
                   for entry in history if isinstance(entry, dict))
    return f"<table class='slidenet-history'><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _number(value):
    """A history cell: integers as they are, floats to 4 significant digits, else escaped."""
    if isinstance(value, bool) or value is None:
        return "-" if value is None else html.escape(str(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return html.escape(str(value))


def summary_json(infos):
    """The summary as plain data: ``{"layers": [...], "total_params": n, "total_madds": n}``.

    Each layer: name, text, output_shape ([H, W, D], or [n] for FC), params, params_formula,
    size_formulas, receptive_field [r_h, r_w], madds, activation_bytes; a merge also has
    "branches": one list of such layers per branch, and "merge_formula", how they meet
    ("8x8x4 + 8x8x4", "depth 16 + 16 = 32"). The totals count every branch.
    """
    every = list(walk_infos(infos))
    return {"layers": _layers_json(infos),
            "total_params": sum(info.params for info in every),
            "total_madds": sum(info.madds for info in every),
            "total_activation_bytes": sum(info.activation_bytes for info in every)}


def _layers_json(infos):
    return [{
        "name": info.name,
        "text": info.spec.text,
        "output_shape": list(info.output_shape),
        "params": info.params,
        "params_formula": info.params_formula,
        "size_formulas": list(info.size_formulas),
        "receptive_field": list(info.receptive_field),
        "receptive_field_capped": info.field_capped,
        "notes": info.spec.type.notes(info),
        "madds": info.madds,
        "activation_bytes": info.activation_bytes,
        **({"branches": [_layers_json(branch) for branch in info.branches],
            "merge_formula": _merge_formula(info)} if info.branches else {}),
    } for info in infos]


def _rows(infos, depth):
    """The table's rows: each branch's layers indented under its title, then the merge."""
    indent = "  " * depth
    for info in infos:
        for number, branch in enumerate(info.branches, 1):
            yield (f"{indent}  branch {number} of {info.name}",) + ("",) * (len(_COLUMNS) - 1)
            yield from _rows(branch, depth + 2)
        yield _row(info, indent)


def _merge_formula(info):
    """How the branches meet: "8x8x4 + 8x8x4" for ADD, "depth 16 + 16 = 32" for CONCAT."""
    ends = [branch[-1].output_shape for branch in info.branches]
    if info.output_shape == ends[0]:
        return " + ".join("x".join(map(str, shape)) for shape in ends)
    depths = " + ".join(str(shape[-1]) for shape in ends)
    return f"depth {depths} = {info.output_shape[-1]}"


def _row(info, indent=""):
    height, width = info.size_formulas or ("", "")
    # A square geometry has the same formula on both axes; show it once.
    size = height if height == width else f"h: {height}; w: {width}"
    if info.branches:
        size = _merge_formula(info)
    return (indent + info.name, info.spec.text, " x ".join(str(n) for n in info.output_shape),
            info.params_formula or "-", size or "-",
            " x ".join(str(r) for r in info.receptive_field) + ("*" if info.field_capped else ""),
            f"{info.madds:,}", _bytes(info.activation_bytes))


def _notes(infos):
    """What the table leaves implicit: paddings slidenet chose, and capped receptive fields."""
    every = list(walk_infos(infos))
    lines = [f"{info.name} {info.spec.text}: {note}"
             for info in every for note in info.spec.type.notes(info)]
    if any(info.branches for info in infos):
        lines.append("a merge's receptive field is the union of its branches' (the largest, "
                     "when they are padded alike)")
    if any(info.field_capped for info in every):
        h, w = infos[0].output_shape[:2]
        lines.append(f"* the whole {h} x {w} input: these windows reach past its edges, into "
                     "padding or beyond, which adds nothing to what a unit sees")
    return ["", "notes:"] + [f"  {line}" for line in lines] if lines else []


def _bytes(n):
    """``512 B``, ``12.0 KiB``, ``3.1 MiB``, ``1.2 GiB``."""
    if n < 1024:
        return f"{n} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}"
