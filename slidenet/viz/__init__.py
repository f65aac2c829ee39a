"""Pictures of a net, each a function that returns a matplotlib Figure (no pyplot, no display).

    filters_figure(net, layer=None)                 the filters of a layer as images
    activations_figure(net, image, pixels=None)     an image's maps after every CONV/RELU/POOL
    patches_figure(top_patches(net, x, normalizer, layer))   what each channel responds to
    maximize_figure(maximize(net, normalizer, layer))        inputs found by gradient ascent
    curves_figure(history)                          loss, accuracy and learning rate per epoch
    slide_figure(n, f, s, p) / save_slide_gif(path, n, f, s, p)   the sliding window

Figures with tiles carry `fig.tiles`: {name: grid.Layout} with the tile count and grid shape.
`grid.save(fig, path)` writes any of them. Needs matplotlib and Pillow (`slidenet[viz]`).
"""
from slidenet.viz.activations import activation_maps, activations_figure
from slidenet.viz.curves import curves_figure, load_history
from slidenet.viz.filters import filter_weights, filters_figure
from slidenet.viz.grid import Layout, save
from slidenet.viz.maximize import maximize, maximize_figure
from slidenet.viz.patches import fields, patches_figure, top_patches
from slidenet.viz.slide import save_slide_gif, slide_figure

__all__ = ["Layout", "activation_maps", "activations_figure", "curves_figure", "fields",
           "filter_weights", "filters_figure", "load_history", "maximize", "maximize_figure",
           "patches_figure", "save", "save_slide_gif", "slide_figure", "top_patches"]
