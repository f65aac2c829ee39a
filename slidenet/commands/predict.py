"""`slidenet predict MODEL IMAGE...`: the top classes with their probabilities for each image.

IMAGE may be a folder: its image files are classified in name order. A file that cannot be
read is reported on its own line and the others are still classified; the exit status is then
2. Images are converted to the model's colour depth; a transparent one is composited onto the
background of the training images, and one whose brightness is the opposite of theirs (dark
digits on white paper for an MNIST model) gets a note suggesting --invert.
"""
import sys
from pathlib import Path

import numpy as np

from slidenet import data as datasets
from slidenet.data.images import IMAGE_SUFFIXES
from slidenet.errors import DataError, OutOfMemory, SlidenetError
from slidenet.model import load

# An image whose mean brightness (0..1) is this far from the training images' mean is more
# likely drawn the other way round (dark on light) than just a dim or bright picture.
OPPOSITE = 0.4


def register(subparsers):
    p = subparsers.add_parser("predict", help="classify image files with a trained model")
    p.add_argument("model", help="a model file written by `slidenet train`")
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files (PNG, JPEG, BMP, GIF, ...) or folders of them")
    p.add_argument("--top", type=int, default=3, help="how many classes to show per image (default: 3)")
    p.add_argument("--resize", action="store_true",
                   help="stretch images to the net's INPUT size (default: refuse other sizes, "
                        "unless the model was trained with --resize)")
    p.add_argument("--invert", action="store_true",
                   help="use 255 - pixel: dark-on-light drawings for a model trained on "
                        "light-on-dark images such as MNIST's digits")
    p.add_argument("--batch-size", type=int, default=256,
                   help="images per forward pass; smaller needs less memory (default: 256)")
    p.set_defaults(func=run)


def _files(paths):
    """Every path as given, a folder replaced by its image files (hidden ones left out)."""
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                           and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DataError(f"{path} is a folder with no image files in it")
            files += found
        else:
            files.append(path)
    return files


def run(args):
    if args.top < 1:
        raise SlidenetError(f"--top must be at least 1, not {args.top}")
    if args.batch_size < 1:
        raise SlidenetError(f"--batch-size must be at least 1, not {args.batch_size}")
    model = load(args.model)
    trained = float(np.mean(model.normalizer.mean))     # training images' mean brightness
    background = 0 if trained < 0.5 else 255
    read, failed = [], 0
    for path in _files(args.images):
        notes = []
        try:
            pixels = datasets.load_image(path, model.input_shape,
                                         resize=args.resize or model.resized,
                                         background=background, notes=notes)
        except DataError as err:
            print(f"slidenet predict: error: {err}", file=sys.stderr)
            failed += 1
            continue
        if args.invert:
            pixels = 255 - pixels
        elif abs(pixels.mean() / 255 - trained) > OPPOSITE:
            notes.append(f"{path} is mostly {'light' if pixels.mean() > 127 else 'dark'} (mean "
                         f"{pixels.mean() / 255:.2f}) but the training images are mostly "
                         f"{'dark' if trained < 0.5 else 'light'} (mean {trained:.2f}); if it "
                         "is drawn the other way round, pass --invert")
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        read.append((path, pixels))
    if read:
        try:
            probs = model.predict(np.stack([pixels for _, pixels in read]), args.batch_size)
        except OutOfMemory as err:
            raise err.advise(f"try a smaller batch, e.g. --batch-size {max(1, args.batch_size // 2)}") from None
        names = model.class_names
        for (path, _), p in zip(read, probs):
            best = np.argsort(-p, kind="stable")[:args.top]
            print(f"{path}: " + ", ".join(f"{names[i]} {p[i]:.3f}" for i in best))
    return 2 if failed else 0
