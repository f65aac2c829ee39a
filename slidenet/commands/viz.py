"""`slidenet viz PICTURE ...`: one picture of a net (or of the sliding window) into a file.

    slidenet viz filters MODEL [--layer L]            the filters as small images
    slidenet viz activations MODEL IMAGE [--layer L]  an image's maps after each layer
    slidenet viz patches MODEL [--data SPEC]          the image patches each channel likes most
    slidenet viz maximize MODEL [--layer L]           inputs found by gradient ascent
    slidenet viz curves RUN_DIR|MODEL                 loss and accuracy per epoch
    slidenet viz slide --input N --filter F ...       a filter sliding over a padded input (GIF)

The pictures themselves are library functions in `slidenet.viz`; this module only parses
arguments, loads what they need and writes the file. matplotlib is imported when a picture is
drawn, so the rest of the CLI does not need it.
"""
import importlib
import importlib.util

from slidenet import data as datasets
from slidenet.errors import SlidenetError
from slidenet.model import load


def register(subparsers):
    parser = subparsers.add_parser(
        "viz", help="pictures: filters, activation maps, top patches, curves, the sliding window",
        description="Draw one picture into a PNG (or, for `slide`, an animated GIF).")
    pictures = parser.add_subparsers(dest="picture", metavar="PICTURE")
    pictures.required = True

    p = _picture(pictures, "filters", "the filters of a layer as images (default: the first CONV)",
                 "filters.png")
    p.add_argument("--layer", help="a CONV (or FC) layer, by name (conv2, or conv3 inside a "
                                   "branch) or position (default: the first CONV)")
    p.set_defaults(func=run_filters)

    p = _picture(pictures, "activations", "an image's activation maps after every CONV, RELU "
                 "and POOL (and every branch's)", "activations.png")
    p.add_argument("image", help="a PNG or JPEG of the net's input size")
    p.add_argument("--layer", help="only this layer's maps, by name (branch layers too) or "
                                   "position (default: every layer with maps)")
    p.add_argument("--resize", action="store_true",
                   help="stretch the image to the input size (without it: only for a model "
                        "trained with --resize)")
    p.set_defaults(func=run_activations)

    p = _picture(pictures, "patches", "the 9 image patches that activate each channel most",
                 "patches.png")
    p.add_argument("--data", help="data spec (default: the data the model was trained on)")
    p.add_argument("--split", choices=["test", "train"], default="test", help="which split")
    p.add_argument("--layer", help="a layer with an H x W output, by name (branch layers too) "
                                   "or position (default: the last CONV)")
    p.add_argument("--channels", type=int, default=16, help="how many channels, from 0")
    p.set_defaults(func=run_patches)

    p = _picture(pictures, "maximize", "for each filter, an input found by gradient ascent "
                 "that maximises its mean activation", "maximize.png")
    p.add_argument("--layer", help="any layer by name (branch layers too) or position "
                                   "(default: the last CONV)")
    p.add_argument("--channels", type=int, default=16, help="how many channels, from 0")
    p.add_argument("--steps", type=int, default=200, help="gradient-ascent steps")
    p.add_argument("--seed", type=int, default=0, help="seed of the starting noise and jitter")
    p.set_defaults(func=run_maximize)

    p = pictures.add_parser("curves", help="training and validation loss and accuracy per epoch",
                            description="Plot RUN_DIR/history.json, written by `slidenet train`, "
                                        "or the history inside a model file.")
    p.add_argument("run", metavar="RUN_DIR", help="a run folder, its history.json, or a model file")
    p.add_argument("--out", default="curves.png", help="picture file to write")
    p.set_defaults(func=run_curves)

    p = pictures.add_parser(
        "slide", help="an animated GIF of a filter sliding over a zero-padded input",
        description="One frame per output position, with (N + 2P - F) / S + 1 and its numbers.")
    p.add_argument("--input", type=int, default=7, metavar="N", help="input size N x N")
    p.add_argument("--filter", type=int, default=3, metavar="F", help="filter size F x F")
    p.add_argument("--stride", type=int, default=2, metavar="S", help="stride")
    p.add_argument("--pad", type=int, default=1, metavar="P", help="zero padding per side")
    p.add_argument("--out", default="slide.gif",
                   help="slide.gif (animated); a .png name writes the finished picture instead")
    p.set_defaults(func=run_slide)


def _picture(pictures, name, text, default_out):
    p = pictures.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
    p.add_argument("model", help="a model file written by `slidenet train` (model.npz, best.npz)")
    p.add_argument("--out", default=default_out, help="picture file to write")
    return p


def _viz(module):
    """A `slidenet.viz` module, or a clear error when the picture libraries are missing."""
    for package in ("matplotlib", "PIL"):
        if importlib.util.find_spec(package) is None:
            raise SlidenetError(f"pictures need matplotlib and Pillow, and {package} is not "
                                "installed: pip install 'slidenet[viz]'")
    return importlib.import_module(f"slidenet.viz.{module}")


def _write(fig, path):
    _viz("grid").save(fig, path)
    print(f"wrote {path}")
    return 0


def _positive(name, value):
    if value < 1:
        raise SlidenetError(f"--{name} must be at least 1, not {value}")


def run_filters(args):
    return _write(_viz("filters").filters_figure(load(args.model).net, args.layer), args.out)


def run_activations(args):
    model = load(args.model)
    pixels = datasets.load_image(args.image, model.input_shape,
                                 resize=args.resize or model.resized)
    probs = model.predict(pixels[None])[0]
    best = int(probs.argmax())
    caption = f"predicted {model.class_names[best]} (p = {probs[best]:.3f})"
    x = model.normalizer.normalize(pixels[None])
    fig = _viz("activations").activations_figure(model.net, x[0], pixels=pixels, caption=caption,
                                                 layer=args.layer)
    return _write(fig, args.out)


def run_patches(args):
    _positive("channels", args.channels)
    model = load(args.model)
    dataset = model.load_data(args.data, args.model)
    x, y = (dataset.x_test, dataset.y_test) if args.split == "test" else \
        (dataset.x_train, dataset.y_train)
    if len(y) == 0:
        raise SlidenetError(f"{dataset.spec} has no {args.split} split")
    patches = _viz("patches")
    found = patches.top_patches(model.net, x, model.normalizer, args.layer, channels=args.channels)
    return _write(patches.patches_figure(found, dataset.class_names, y), args.out)


def run_maximize(args):
    for name in ("channels", "steps"):
        _positive(name, getattr(args, name))
    model = load(args.model)
    maximize = _viz("maximize")
    result = maximize.maximize(model.net, model.normalizer, args.layer, channels=args.channels,
                               steps=args.steps, seed=args.seed)
    # The last layer's units are the classes: name them.
    last = result.info is model.net.infos[-1]
    names = model.class_names if last else None
    return _write(maximize.maximize_figure(result, names), args.out)


def run_curves(args):
    curves = _viz("curves")
    return _write(curves.curves_figure(curves.load_history(args.run), args.run), args.out)


def run_slide(args):
    slide = _viz("slide")
    if args.out.lower().endswith(".gif"):
        frames = slide.save_slide_gif(args.out, args.input, args.filter, args.stride, args.pad)
        print(f"wrote {args.out} ({frames} frames)")
        return 0
    return _write(slide.slide_figure(args.input, args.filter, args.stride, args.pad), args.out)
