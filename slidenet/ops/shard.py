"""Which rows of a global batch this process computes: the one hook between data-parallel
training (`slidenet.training.distributed`) and the layers whose result depends on the whole batch.

In one process nothing is ever set, and every layer sees its whole batch, exactly as before.
Under `mpiexec -n R slidenet train`, each rank computes a slice of every global batch, and the
training loop sets that slice, a `Part`, for the step's forward and backward (`use(part)`). Two kinds of layer consult it:

- DROPOUT draws its mask for the whole global batch and keeps its own rows, so every rank
  advances the dropout generator exactly as one process would and uses the same masks;
- BATCHNORM hands `part.reduce` to its kernel, which adds its per-channel sums over all
  ranks, so the mean and variance are those of the global batch, whatever R is.

Augmentation (`slidenet.data.batching.augment`) takes the part the same way as DROPOUT.
"""
from contextlib import contextmanager
from typing import Callable, NamedTuple

_current = {"part": None}


class Part(NamedTuple):
    """Rows start:stop of a global batch of `total` rows.

    weight: this part's share of the batch's mean loss, (stop - start) / total; 0 for a
        stand-in (a rank left without an image by a last batch smaller than R recomputes
        row 0 so that it can take part in the step's sums, and adds nothing to them).
    reduce: float64 (k,) sums over this part's rows -> the same sums over the whole batch
        (an MPI Allreduce; a stand-in contributes zeros).
    """
    start: int
    stop: int
    total: int
    weight: float
    reduce: Callable

    @property
    def rows(self):
        """slice(start, stop): this part's rows of the global batch (or of a mask drawn for it)."""
        return slice(self.start, self.stop)

    @property
    def active(self):
        """False for a stand-in, whose rows count nowhere."""
        return self.weight > 0


def current():
    """The Part being computed, or None (one process: the batch is whole)."""
    return _current["part"]


def use(part):
    """From now on layers compute `part` of a global batch (None: the whole batch); returns
    the previous part. The training loop sets one per step and None after the epoch."""
    previous, _current["part"] = _current["part"], part
    return previous


@contextmanager
def computing(part):
    """Within the block, layers compute `part` of a global batch (None: the whole batch)."""
    previous = use(part)
    try:
        yield part
    finally:
        use(previous)
