"""`slidenet predict MODEL IMAGE...`: the top classes with their probabilities for each image."""
import numpy as np

from slidenet import data as datasets
from slidenet.train import load_model


def register(subparsers):
    p = subparsers.add_parser("predict", help="classify image files with a trained model")
    p.add_argument("model", help="a model file written by `slidenet train`")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="PNG or JPEG files")
    p.add_argument("--top", type=int, default=3, help="how many classes to show per image")
    p.add_argument("--resize", action="store_true", help="resize images to the net's INPUT size")
    p.set_defaults(func=run)


def softmax(scores):
    """Probabilities from scores (N, C), row by row."""
    e = np.exp(scores - scores.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def run(args):
    net, normalizer, meta, _ = load_model(args.model)
    names = meta["class_names"]
    images = np.stack([datasets.load_image(path, net.input_shape, resize=args.resize) for path in args.images])
    probs = softmax(net.forward(normalizer.normalize(images)).astype(np.float64)[:, :len(names)])
    top = max(1, min(args.top, len(names)))
    for path, p in zip(args.images, probs):
        best = np.argsort(-p)[:top]
        print(f"{path}: " + ", ".join(f"{names[i]} {p[i]:.3f}" for i in best))
    return 0
