"""Scoring a net on labelled images: accuracy, mean loss, per-class accuracy, confusion matrix."""
import numpy as np

from slidenet.ops.losses import LOSSES


def evaluate(net, x_uint8, y, normalizer, num_classes, loss="softmax", batch_size=256):
    """Metrics of `net` on uint8 images x (N, H, W, D) with labels y (N,).

    Returns {"accuracy", "loss", "per_class", "confusion"}; confusion[i, j] counts images of
    true class i predicted as class j, per_class is NaN for a class with no images.
    """
    return metrics(*tally(net, x_uint8, y, normalizer, num_classes, loss, batch_size))


def tally(net, x_uint8, y, normalizer, num_classes, loss="softmax", batch_size=256):
    """The counts behind `evaluate`: confusion (num_classes, num_classes) int64 and the summed
    loss, which add up over parts of a data set (`slidenet.training.distributed` scores one per rank)."""
    loss_fn = LOSSES[loss]
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    total_loss = 0.0
    for start in range(0, len(y), batch_size):
        xb = normalizer.normalize(x_uint8[start:start + batch_size])
        yb = y[start:start + batch_size]
        scores = net.forward(xb, train=False)
        total_loss += loss_fn(scores[:, :num_classes], yb)[0] * len(yb)
        np.add.at(confusion, (yb, scores[:, :num_classes].argmax(axis=1)), 1)
    return confusion, total_loss


def metrics(confusion, total_loss):
    """`evaluate`'s dict from a confusion matrix and the loss summed over its images."""
    images = int(confusion.sum())
    counts = confusion.sum(axis=1)
    per_class = np.where(counts > 0, np.diag(confusion) / np.maximum(counts, 1), np.nan)
    return {"accuracy": float(np.trace(confusion) / max(1, images)),
            "loss": float(total_loss / max(1, images)),
            "per_class": per_class.tolist(), "confusion": confusion.tolist(),
            "chance": chance(confusion)}


def chance(confusion):
    """What a model that learned nothing scores on these images: {"guess": 1 / C (a uniform
    guess among C classes), "majority": the share of the most common true class (always
    answering it)}. An accuracy at or below the larger is no evidence of learning."""
    counts = np.asarray(confusion).sum(axis=1)
    return {"guess": 1 / max(1, len(counts)),
            "majority": float(counts.max() / max(1, counts.sum())) if len(counts) else 0.0}


def chance_text(result):
    """One line: the chance levels, and a warning when the accuracy does not beat them."""
    guess, majority = result["chance"]["guess"], result["chance"]["majority"]
    classes = round(1 / guess)
    text = (f"chance {guess:.4f} (a guess among {classes} classes); always the most common "
            f"class {majority:.4f}")
    if result["accuracy"] <= max(guess, majority):
        text += ("; this accuracy is no better: the model learned nothing that carries over "
                 "to these images (too few of them, or overfitting: see `slidenet viz curves`)")
    return text
