"""A net's summary, as a table to read or as JSON, from `slidenet.notation.shapes.infer`'s LayerInfos.

Only shapes and counts are involved, no weights, so even a VGG-16-sized net answers at once.
"""

_COLUMNS = ("layer", "pattern", "output", "parameters", "output size (N + 2P - F) / S + 1",
            "receptive field", "multiply-adds", "memory")
_RIGHT = {"multiply-adds", "memory"}   # numbers line up on their last digit


def summary_text(infos):
    """One aligned row per layer, then the totals for one image."""
    rows = [_COLUMNS] + [_row(info) for info in infos]
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


def summary_json(infos):
    """The summary as plain data: ``{"layers": [...], "total_params": n, "total_madds": n}``.

    Each layer: name, text, output_shape ([H, W, D], or [n] for FC), params, params_formula,
    size_formulas, receptive_field [r_h, r_w], madds, activation_bytes.
    """
    layers = [{
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
    } for info in infos]
    return {"layers": layers,
            "total_params": sum(info.params for info in infos),
            "total_madds": sum(info.madds for info in infos),
            "total_activation_bytes": sum(info.activation_bytes for info in infos)}


def _row(info):
    height, width = info.size_formulas or ("", "")
    # A square geometry has the same formula on both axes; show it once.
    size = height if height == width else f"h: {height}; w: {width}"
    return (info.name, info.spec.text, " x ".join(str(n) for n in info.output_shape),
            info.params_formula or "-", size or "-",
            " x ".join(str(r) for r in info.receptive_field) + ("*" if info.field_capped else ""),
            f"{info.madds:,}", _bytes(info.activation_bytes))


def _notes(infos):
    """What the table leaves implicit: paddings slidenet chose, and capped receptive fields."""
    lines = [f"{info.name} {info.spec.text}: {note}"
             for info in infos for note in info.spec.type.notes(info)]
    if any(info.field_capped for info in infos):
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
