"""The lecture's notation: pattern text -> layer specs -> shapes -> the summary.

    arguments   reading a layer's arguments as written (`Value`, `whole`, `axes`, `padding`)
    spec        `LayerSpec`: one parsed layer with its defaults
    pattern     `parse(pattern)`: brackets, repeats, `?`, variables -> a list of LayerSpec
    shapes      `infer(specs)`: every layer's output volume, parameters and formulas
    summary     the table (and its JSON) of what `infer` found, before any weight exists
"""
