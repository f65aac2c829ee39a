"""`slidenet.fit`: train on arrays in memory, from Python or a notebook, with `slidenet train`'s loop.

    import slidenet
    model = slidenet.fit("INPUT(28x28x1) -> [CONV(16) -> RELU]*2 -> POOL -> FC(10)", x, y,
                         epochs=2, validation=0.1)
    model.history                       # one dict per epoch
    model.evaluate(x_test, y_test)      # {"accuracy": ..., "loss": ..., ...}
    model.predict(x_test)               # probabilities (N, 10)
    model.save("digits.npz")            # a model file every command reads

One implementation: `fit` turns the arrays into a `Dataset` and the arguments into a
`TrainConfig` with the command's defaults, and hands both to `slidenet.training.loop.run`, the loop of
`slidenet train`. So `fit(pattern, x, y, seed=s)` gives the weights `slidenet train --data
npz:FILE --seed s` gives on the same arrays, bit for bit.
"""
from dataclasses import replace

from slidenet.data.dataset import Dataset, as_images
from slidenet.errors import DataError, SlidenetError
from slidenet.model import Model, class_numbers, model_arrays
from slidenet.net import Net
from slidenet.training.config import TrainConfig, check_settings
from slidenet.training.loop import TrainingInterrupted, run, run_meta

DEFAULTS = TrainConfig()
SOURCE = "slidenet.fit"


def fit(net, x, y, *, epochs=DEFAULTS.epochs, validation=DEFAULTS.val_fraction, batch_size=None,
        lr=DEFAULTS.lr, optimizer=DEFAULTS.optimizer, momentum=None,
        weight_decay=DEFAULTS.weight_decay, schedule=DEFAULTS.schedule, loss=DEFAULTS.loss,
        augment=DEFAULTS.augment, flip=DEFAULTS.flip, erase=DEFAULTS.erase,
        label_smoothing=DEFAULTS.label_smoothing, patience=DEFAULTS.patience,
        seed=DEFAULTS.seed, threads=DEFAULTS.threads, class_names=None, callbacks=(), out=None,
        verbose=True, variables=None, skip_optional=False):
    """Train `net` on images `x` with labels `y`; returns the trained `slidenet.Model`.

    net: a pattern ("INPUT(28x28x1) -> ... -> FC(10)", built with `seed`, `variables` and
        `skip_optional` as `slidenet train --pattern` builds it), or a `Net`, trained in place
        from its weights as they are (the Model's `.net` is that Net).
    x: the training images, (N, H, W, D) channels last, or (N, H, W) for one channel; uint8
        pixels 0..255, or floats in [0, 1] (the rule of `npz:` data), rounded to 256 levels.
    y: class numbers (N,), 0 .. C - 1 for a net that ends in FC(C).
    validation: a fraction of (x, y) held out at random (`seed`), as `slidenet train
        --val-fraction`; or (x_val, y_val), arrays as x and y; or None or 0 for none (the best
        epoch is then the lowest training loss).
    epochs, batch_size (None: 64, or fewer for a small training split), lr, optimizer,
        momentum (momentum and nesterov only), weight_decay, schedule, loss, augment, flip,
        erase, label_smoothing, patience, seed, threads: `slidenet train`'s flags, with its
        defaults (TrainConfig).
    class_names: one name per class (default "0", "1", ...).
    callbacks: after every epoch each is called with a dict, that epoch's history entry
        (epoch, loss, accuracy, val_accuracy, val_loss, lr, seconds, images_per_s): a function
        `f(entry)` or an object with `on_epoch_end(entry)`. One that returns True stops the
        training after this epoch (the Model is returned as usual).
    out: a folder for model.npz, best.npz and history.json after every epoch, as `slidenet
        train --out` writes them; None (default) writes nothing.
    verbose: print `slidenet train`'s lines (the data, the net, the loss at initialisation, one
        line an epoch). Progress bars show on a terminal and in a notebook.

    Ctrl-C (KeyboardInterrupt, a notebook's "interrupt") stops the training and returns the
    model as it stands, with a printed note; `model.history` holds the finished epochs.
    Bad arguments raise a `slidenet.errors.SlidenetError` naming the argument.
    """
    settings = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "optimizer": optimizer,
                "momentum": momentum, "weight_decay": weight_decay, "schedule": schedule,
                "loss": loss, "erase": erase, "label_smoothing": label_smoothing,
                "patience": patience, "seed": seed, "threads": threads}
    check_settings(settings)
    if momentum is not None and optimizer not in ("momentum", "nesterov"):
        raise SlidenetError(f"momentum applies to optimizer='momentum' or 'nesterov', not "
                            f"{optimizer!r}, which does not use it; drop momentum=")
    if not isinstance(seed, int) or seed < 0:
        raise SlidenetError(f"seed must be a whole number 0 or more, not {seed!r}")
    net = _net(net, seed, variables, skip_optional)
    images = as_images(x, "x")
    classes = list(class_names) if class_names is not None else \
        [str(c) for c in range(net.num_outputs)]
    labels = class_numbers(y, len(images), len(classes))
    fraction, held_out = _validation(validation, images.shape[1:], len(classes))
    dataset = Dataset(images, labels, images[:0], labels[:0], classes, "arrays", "arrays")
    config = replace(DEFAULTS, pattern=net.pattern, variables=dict(net.variables),
                     skip_optional=net.skip_optional, data=None, val_fraction=fraction, out=out,
                     batch_size=batch_size or 0, augment=bool(augment), flip=bool(flip),
                     **{k: v for k, v in settings.items() if k != "batch_size" and v is not None})
    for callback in callbacks:
        if not callable(getattr(callback, "on_epoch_end", callback)):
            raise SlidenetError(f"callback {callback!r} is neither a function nor an object "
                                "with on_epoch_end(entry)")
    try:
        done = run(config, log=print if verbose else _quiet, dataset=dataset, net=net,
                   validation=held_out, callbacks=callbacks)
    except TrainingInterrupted as stop:
        done = stop.run
        finished = len(done.history)
        print(f"slidenet.fit: interrupted during epoch {finished + 1}; returning the model as it "
              f"stands (model.history holds the {finished} finished epoch"
              f"{'s' * (finished != 1)}); fit it again to go on")
    meta = {**run_meta(done), "source": SOURCE}
    return Model(done.net, done.normalizer, meta,
                 model_arrays(done.net, done.normalizer, done.optimizer, done.rngs))


def _net(net, seed, variables, skip_optional):
    """The Net to train: `net` itself, or built from a pattern as `slidenet train` builds it."""
    if isinstance(net, Net):
        if variables or skip_optional:
            raise SlidenetError("variables= and skip_optional= apply to a pattern; this Net is "
                                "already built")
        return net
    if isinstance(net, Model):
        raise SlidenetError("fit takes a Net or a pattern; to train a loaded model further, "
                            "pass model.net (the normaliser is fitted again on x)")
    if not isinstance(net, str):
        raise SlidenetError(f"fit takes a pattern string or a slidenet.Net, not "
                            f"{type(net).__name__}")
    return Net.from_pattern(net, seed=seed, skip_optional=skip_optional, **(variables or {}))


def _validation(validation, shape, classes):
    """(val_fraction, None) for a fraction or none; (0.0, (x_val, y_val)) for arrays."""
    if validation is None:
        return 0.0, None
    if isinstance(validation, (int, float)) and not isinstance(validation, bool):
        check_settings({"val_fraction": validation}, name=lambda _: "validation")
        return float(validation), None
    if not isinstance(validation, (tuple, list)) or len(validation) != 2:
        raise SlidenetError("validation must be a fraction in [0, 1), a pair (x_val, y_val), "
                            f"or None, not {type(validation).__name__}")
    x_val = as_images(validation[0], "x_val")
    if tuple(x_val.shape[1:]) != tuple(shape):
        raise DataError(f"x_val holds images of {'x'.join(map(str, x_val.shape[1:]))} but x "
                        f"holds {'x'.join(map(str, shape))}")
    return 0.0, (x_val, class_numbers(validation[1], len(x_val), classes, "y_val"))


def _quiet(*_):
    """The log of a fit with verbose=False."""
