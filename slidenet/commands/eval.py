"""`slidenet eval MODEL`: accuracy, loss, per-class accuracy and the confusion matrix.

Under `mpiexec -n R` each rank scores one shard of the images and rank 0 prints the sums.
"""
import json

from slidenet.errors import OutOfMemory, SlidenetError
from slidenet.model import load
from slidenet.training import distributed
from slidenet.training.evaluate import chance_text, evaluate


def register(subparsers):
    p = subparsers.add_parser("eval", help="evaluate a trained model on a data split",
                              description="Evaluate MODEL, by default on the test split of the "
                                          "data it was trained on.")
    p.add_argument("model", help="a model file written by `slidenet train` (model.npz, best.npz)")
    p.add_argument("--data", help="data spec (default: the data the model was trained on)")
    p.add_argument("--split", choices=["test", "train"], default="test", help="which split")
    p.add_argument("--batch-size", type=int, default=256,
                   help="images per forward pass; smaller needs less memory")
    p.add_argument("--json", action="store_true", help="print JSON: accuracy, loss, per_class, confusion")
    p.set_defaults(func=run)


def run(args):
    if args.batch_size < 1:
        raise SlidenetError(f"--batch-size must be at least 1, not {args.batch_size}")
    model = load(args.model)
    net, normalizer, meta = model.net, model.normalizer, model.meta
    dataset = model.load_data(args.data, args.model)
    x, y = (dataset.x_test, dataset.y_test) if args.split == "test" else (dataset.x_train, dataset.y_train)
    if len(y) == 0:
        raise SlidenetError(f"{dataset.spec} has no {args.split} split")
    loss = meta.get("config", {}).get("loss", "softmax")
    group = distributed.world()
    try:
        result = (group.evaluate if group else evaluate)(net, x, y, normalizer,
                                                         len(dataset.class_names), loss,
                                                         args.batch_size)
    except OutOfMemory as err:
        raise err.advise(f"try a smaller batch, e.g. --batch-size {max(1, args.batch_size // 2)}") from None
    if group and group.rank:
        return 0
    if args.json:
        print(json.dumps({**result, "class_names": list(dataset.class_names), "images": int(len(y))}))
        return 0
    print(f"{args.model} on {dataset.spec} ({args.split}, {len(y)} images)")
    print(f"accuracy {result['accuracy']:.4f}   loss {result['loss']:.4f}")
    print(chance_text(result))
    print(_confusion_text(result, dataset.class_names))
    return 0


def _confusion_text(result, names):
    """Per-class accuracy and the confusion matrix (rows: true class, numbered; columns:
    predicted class, by the same numbers)."""
    width = max(5, *(len(str(v)) for row in result["confusion"] for v in row))
    # Classes named by their numbers (digits) need no second label.
    numbered = [str(i) for i in range(len(names))] != [str(n) for n in names]
    labels = [f"{i} {name}" if numbered else str(name) for i, name in enumerate(names)]
    label = max(5, *(len(t) for t in labels))
    head = f"{'class':<{label + 9}}" + " ".join(f"{i:>{width}}" for i in range(len(names)))
    lines = ["per-class accuracy and confusion (rows: true class; columns: predicted class, "
             "by number)", head]
    for text, acc, row in zip(labels, result["per_class"], result["confusion"]):
        shown = "  n/a " if acc != acc else f"{acc:6.3f}"
        lines.append(f"{text:<{label}} {shown}  " + " ".join(f"{v:>{width}}" for v in row))
    return "\n".join(lines)
