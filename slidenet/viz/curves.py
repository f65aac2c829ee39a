"""Training curves: loss and accuracy per epoch, training and validation, and the learning rate.

The numbers come from `history.json` (written by `slidenet train` after every epoch) or from a
model file's meta["history"]: a list of {epoch, loss, accuracy, val_accuracy, val_loss, lr,
seconds, images_per_s}, with val_* None when no validation split was held out.
"""
from pathlib import Path

from slidenet.errors import SlidenetError
from slidenet.storage import limits, modelmeta
from slidenet.viz import grid

TRAIN, VAL = "#1f77b4", "#d62728"


def load_history(path):
    """The history list from RUN_DIR/history.json, a history.json given directly, or a model
    file (model.npz, best.npz: the epochs up to the one it holds)."""
    path = Path(path)
    if path.is_dir():
        path = path / "history.json"
    if path.suffix.lower() == ".npz" and path.is_file():
        from slidenet.storage import modelfile
        meta = modelfile.load(path)[1]
        modelmeta.check(meta, path)
        history = meta.get("history")
        check_history(history, path)
        return history
    if not path.is_file():
        raise SlidenetError(f"no history at {path}: give a run folder written by `slidenet train` "
                            "(it holds history.json)")
    limits.check_claim(path.stat().st_size, str(path))
    history = modelmeta.read_json(path.read_bytes(), f"{path} (a training history)",
                                  SlidenetError)
    check_history(history, path)
    return history


def check_history(history, where):
    """SlidenetError unless `history` is a non-empty list of epochs (`modelmeta.check_history`)."""
    if history is None:
        raise SlidenetError(f"{where}: the history is empty; train for at least one epoch")
    modelmeta.check_history(history, where)


def _series(history, key):
    """(epochs, values) for the epochs where `key` has a value."""
    pairs = [(h["epoch"], h[key]) for h in history if h.get(key) is not None]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def curves_figure(history, title="training"):
    """A Figure with three panels sharing the epoch axis: loss, accuracy, learning rate.

    The best validation accuracy (or, without validation, the best training accuracy) is marked.
    """
    check_history(history, title)
    fig = grid.new_figure(10, 3.4)
    loss_ax, acc_ax, lr_ax = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1, 1, 0.7]})
    for ax, key, label in ((loss_ax, "loss", "loss"), (acc_ax, "accuracy", "accuracy")):
        for prefix, colour, name in (("", TRAIN, "training"), ("val_", VAL, "validation")):
            epochs, values = _series(history, prefix + key)
            if epochs:
                ax.plot(epochs, values, "o-", color=colour, ms=3, lw=1.5, label=name)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, frameon=False)
    best_key = "val_accuracy" if _series(history, "val_accuracy")[0] else "accuracy"
    epochs, values = _series(history, best_key)
    best = max(range(len(values)), key=values.__getitem__)
    acc_ax.plot([epochs[best]], [values[best]], "*", color="black", ms=11, zorder=3)
    acc_ax.annotate(f"best {values[best]:.4f}\nepoch {epochs[best]}", (epochs[best], values[best]),
                    textcoords="offset points", xytext=(-10, -30), ha="right", fontsize=8)
    epochs, rates = _series(history, "lr")
    if epochs:
        lr_ax.plot(epochs, rates, "o-", color="#555555", ms=3, lw=1.5)
        lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    lr_ax.set_title("learning rate (end of epoch)", fontsize=10)
    lr_ax.set_xlabel("epoch")
    lr_ax.grid(alpha=0.3)
    for ax in (loss_ax, acc_ax, lr_ax):
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(f"{title}: {len(history)} epochs", fontsize=11)
    return fig
