"""`slidenet predict MODEL IMAGE...`: the top classes with their probabilities for each image."""
import numpy as np

from slidenet import data as datasets
from slidenet.errors import OutOfMemory, SlidenetError
from slidenet.train import load_model


def register(subparsers):
    p = subparsers.add_parser("predict", help="classify image files with a trained model")
    p.add_argument("model", help="a model file written by `slidenet train`")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="PNG or JPEG files")
    p.add_argument("--top", type=int, default=3, help="how many classes to show per image")
    p.add_argument("--resize", action="store_true", help="resize images to the net's INPUT size")
    p.add_argument("--batch-size", type=int, default=256,
                   help="images per forward pass; smaller needs less memory")
    p.set_defaults(func=run)


def softmax(scores):
    """Probabilities from scores (N, C), row by row."""
    e = np.exp(scores - scores.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def run(args):
    if args.batch_size < 1:
        raise SlidenetError(f"--batch-size must be at least 1, not {args.batch_size}")
    net, normalizer, meta, _ = load_model(args.model)
    names = meta["class_names"]
    images = np.stack([datasets.load_image(path, net.input_shape, resize=args.resize) for path in args.images])
    try:
        scores = [net.forward(normalizer.normalize(images[start:start + args.batch_size]))
                  for start in range(0, len(images), args.batch_size)]
    except OutOfMemory as err:
        raise err.advise(f"try a smaller batch, e.g. --batch-size {args.batch_size // 2}") from None
    probs = softmax(np.concatenate(scores).astype(np.float64)[:, :len(names)])
    top = max(1, min(args.top, len(names)))
    for path, p in zip(args.images, probs):
        best = np.argsort(-p)[:top]
        print(f"{path}: " + ", ".join(f"{names[i]} {p[i]:.3f}" for i in best))
    return 0
