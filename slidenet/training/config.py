"""`TrainConfig`: every setting of a training run, one commented field each.

A run's config is saved in its model files, so `--resume` continues with the same settings.
"""
import math
from dataclasses import dataclass, field

import numpy as np

# The default net for 28x28 digits, in the lecture's pattern: [[CONV -> RELU]*2 -> POOL]*2,
# then FC -> RELU -> FC, with twice the filters after the first pool.
DEFAULT_PATTERN = ("INPUT(28x28x1) -> [CONV(16) -> RELU]*2 -> POOL -> [CONV(32) -> RELU]*2 -> POOL "
                   "-> FC(128) -> RELU -> DROPOUT(0.25) -> FC(10)")


@dataclass
class TrainConfig:
    pattern: str = DEFAULT_PATTERN          # the net, in the lecture's notation
    variables: dict = field(default_factory=dict)   # N=2, ... for the pattern's variables
    skip_optional: bool = False             # drop layers marked with ?
    data: str = "mnist5k"                   # data spec, see slidenet.data.load
    epochs: int = 15                        # total epochs (a resumed run continues to this)
    batch_size: int = 0                     # images a step; 0: 64, fewer for a small training split
    lr: float = 2e-3                        # peak learning rate
    optimizer: str = "adam"                 # sgd | momentum | nesterov | adam
    momentum: float = 0.9                   # momentum / nesterov only
    weight_decay: float = 5e-4              # L2 on weights (decoupled for adam)
    schedule: str = "warmup-cosine"         # constant | step | cosine | warmup-cosine
    loss: str = "softmax"                   # softmax | svm
    augment: bool = True                    # random crops of the zero-padded image (2 pixels at 28x28)
    flip: bool = False                      # random horizontal flips (off for digits: a flipped 2 is no 2)
    erase: float = 0.0                      # probability of random erasing: a random rectangle set to the mean
    label_smoothing: float = 0.0            # softmax targets: 1 - e + e/C on the true class, e/C elsewhere
    val_fraction: float = 0.1               # share of the training split held out for validation
    patience: int = 0                       # early stopping after this many epochs without gain; 0 = off
    seed: int = 0                           # weights, split, shuffling, augmentation, dropout
    out: str = "runs/latest"                # where model.npz, best.npz and history.json go
    stop_after: int = 0                     # stop after this many epochs in this run (0 = run to `epochs`)
    threads: int = 0                        # kernel worker threads; 0 = one per core (see `train`)
    resize: bool = False                    # stretch every image to the net's INPUT height x width
    source: str = ""                        # the model whose weights the run starts from (--from)
    freeze: str = ""                        # frozen layers: "" none, "head" all but the scoring
                                            # layer, else the last frozen layer's name or position


# The settings whose values are one of a few words (the command line's `choices`).
CHOICES = {"optimizer": ("sgd", "momentum", "nesterov", "adam"),
           "schedule": ("constant", "step", "cosine", "warmup-cosine"),
           "loss": ("softmax", "svm")}
_AT_LEAST = {"epochs": 1, "batch_size": 1, "patience": 0, "stop_after": 0, "threads": 0}
_WHY = {"threads": " (0: one per core)"}


def check_settings(settings, name=str):
    """SlidenetError naming the first setting outside its range, for `slidenet train`'s flags
    and `slidenet.fit`'s arguments alike. settings: {TrainConfig field: value}, a value of None
    meaning "not given"; name(field) is how the message names it ("--batch-size" or "batch_size")."""
    from slidenet.errors import SlidenetError       # config.py stays importable on its own
    for field_name, value in settings.items():
        if value is None:
            continue
        shown = name(field_name)
        if field_name in _AT_LEAST:
            low = _AT_LEAST[field_name]
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise SlidenetError(f"{shown} must be a whole number, not {value!r}")
            if value < low:
                more = "at least 1" if low else f"0{_WHY.get(field_name, '')} or more"
                raise SlidenetError(f"{shown} must be {more}, not {value}")
        elif field_name in ("lr", "val_fraction", "momentum", "weight_decay", "erase",
                            "label_smoothing"):
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                raise SlidenetError(f"{shown} must be a number, not {value!r}")
            if field_name == "lr" and not value > 0:
                raise SlidenetError(f"{shown} must be > 0, not {value}")
            if field_name in ("val_fraction", "erase", "label_smoothing") and not 0 <= value < 1:
                raise SlidenetError(f"{shown} must be in [0, 1), not {value}")
            if field_name in ("momentum", "weight_decay") and not 0 <= value < math.inf:
                raise SlidenetError(f"{shown} must be 0 or more, not {value}")
        elif field_name in CHOICES and value not in CHOICES[field_name]:
            raise SlidenetError(f"{shown} must be one of {', '.join(CHOICES[field_name])}, "
                                f"not {value!r}")
