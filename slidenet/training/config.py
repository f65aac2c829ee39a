"""`TrainConfig`: every setting of a training run, one commented field each.

A run's config is saved in its model files, so `--resume` continues with the same settings.
"""
from dataclasses import dataclass, field

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
