"""`slidenet predict MODEL IMAGE...`: the top classes with their probabilities for each image."""
import numpy as np

from slidenet import data as datasets
from slidenet.model import load


def register(subparsers):
    p = subparsers.add_parser("predict", help="classify image files with a trained model")
    p.add_argument("model", help="a model file written by `slidenet train`")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="PNG or JPEG files")
    p.add_argument("--top", type=int, default=3, help="how many classes to show per image")
    p.add_argument("--resize", action="store_true", help="resize images to the net's INPUT size")
    p.set_defaults(func=run)


def run(args):
    model = load(args.model)
    names = model.class_names
    images = np.stack([datasets.load_image(path, model.input_shape, resize=args.resize)
                       for path in args.images])
    probs = model.predict(images)
    top = max(1, min(args.top, len(names)))
    for path, p in zip(args.images, probs):
        best = np.argsort(-p)[:top]
        print(f"{path}: " + ", ".join(f"{names[i]} {p[i]:.3f}" for i in best))
    return 0
