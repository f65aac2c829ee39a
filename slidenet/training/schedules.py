"""Learning-rate schedules: functions step -> lr, with steps counted from 0.

``constant``       base_lr throughout.
``step``           base_lr * gamma ** (step // step_every): the rate drops by a factor
                   `gamma` every `step_every` steps.
``cosine``         min_lr + (base_lr - min_lr) * (1 + cos(pi * step / total_steps)) / 2,
                   base_lr at step 0 and min_lr at step total_steps (and after).
``warmup-cosine``  linear warm-up, base_lr * (step + 1) / warmup_steps, for the first
                   `warmup_steps` steps, then the cosine above over the remaining steps
                   (one-cycle style). A large rate on a freshly initialised net can blow it up;
                   the warm-up lets the statistics (and Adam's moments) settle first.

The returned values are Python floats so that float32 parameters stay float32 when multiplied.
"""
import math
from numbers import Integral

from slidenet.errors import SlidenetError

SCHEDULES = ("constant", "step", "cosine", "warmup-cosine")


def _cosine(step, start, base_lr, min_lr, length):
    """Half a cosine from base_lr (at `start`) down to min_lr (at start + length), then flat."""
    progress = min(1.0, (float(step) - start) / length)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _check(base_lr, total_steps, gamma, min_lr):
    """The arguments every schedule shares, with a message that names the bad one."""
    if not base_lr > 0.0:
        raise SlidenetError(f"the learning rate must be > 0; got base_lr={base_lr!r}")
    if not (isinstance(total_steps, Integral) and total_steps >= 1):
        raise SlidenetError(f"total_steps must be a whole number >= 1; "
                            f"got total_steps={total_steps!r}")
    if not 0.0 < gamma <= 1.0:
        raise SlidenetError(f"gamma multiplies the rate at each drop, so it must be in (0, 1]; "
                            f"got gamma={gamma!r}")
    if not 0.0 <= min_lr <= base_lr:
        raise SlidenetError(f"min_lr must be in [0, base_lr={base_lr!r}]; got min_lr={min_lr!r}")


def make_schedule(name, base_lr, total_steps, *, warmup_steps=0, step_every=None, gamma=0.1,
                  min_lr=0.0):
    """The schedule called `name` as a function ``lr(step)`` for steps 0, 1, ..., total_steps - 1.

    base_lr: the peak (and starting, except for warm-up) learning rate, > 0.
    total_steps: the length of training in steps; cosine schedules reach min_lr there.
    warmup_steps: `warmup-cosine` only; 0 picks 5% of total_steps (at least 1, and
        below total_steps).
    step_every: `step` only; default total_steps // 3 (at least 1), i.e. two drops.
    gamma: `step`'s factor per drop, in (0, 1].  min_lr: the cosine floor, in [0, base_lr].
    """
    if name not in SCHEDULES:
        raise SlidenetError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    _check(base_lr, total_steps, gamma, min_lr)
    # A warm-up or drop interval asked of a schedule that has none would silently do nothing.
    if warmup_steps and name != "warmup-cosine":
        raise SlidenetError(f"warmup_steps={warmup_steps!r} applies only to the 'warmup-cosine' "
                            f"schedule, not {name!r}")
    if step_every is not None and name != "step":
        raise SlidenetError(f"step_every={step_every!r} applies only to the 'step' schedule, "
                            f"not {name!r}")
    # Plain Python numbers: NumPy scalars would turn the rates into np.float64.
    base_lr, gamma, min_lr = float(base_lr), float(gamma), float(min_lr)
    total_steps = int(total_steps)

    if name == "constant":
        return lambda step: base_lr

    if name == "step":
        every = max(1, total_steps // 3) if step_every is None else step_every
        if not (isinstance(every, Integral) and every >= 1):
            raise SlidenetError(f"step_every must be a whole number >= 1; got step_every={every!r}")
        every = int(every)
        return lambda step: base_lr * gamma ** (int(step) // every)

    if name == "cosine":
        return lambda step: _cosine(step, 0, base_lr, min_lr, total_steps)

    # warmup-cosine; the default leaves at least one step for the cosine.
    warmup = min(max(1, total_steps // 20), total_steps - 1) if warmup_steps == 0 else warmup_steps
    if not (isinstance(warmup, Integral) and 0 <= warmup < total_steps):
        raise SlidenetError(f"warmup_steps must be a whole number below total_steps={total_steps}; "
                            f"got warmup_steps={warmup!r}")
    warmup = int(warmup)

    def warmup_cosine(step):
        # (step + 1) so that step 0 already moves, at base_lr / warmup, rather than wasting a step.
        if step < warmup:
            return base_lr * (int(step) + 1) / warmup
        return _cosine(step, warmup, base_lr, min_lr, total_steps - warmup)

    return warmup_cosine
