"""Optimizers: SGD, momentum, Nesterov momentum and Adam, in the cs231n notation.

A net exposes `params` and `grads`, ordered dicts name -> NumPy array. An optimizer holds the
live `params` dict and updates every array IN PLACE on `step(grads, lr)`, so layers that hold
the same arrays see the new values without being told.

Weight decay (L2) touches only weights (names ending in ``.W``): decaying biases or the
batch-norm scale and shift only fights the parts of the net that set offsets and scales.
SGD and the momentum methods add it to the gradient (``g' = g + wd * w``); Adam decouples it
(AdamW: ``w -= lr * wd * w``), since inside Adam an L2 gradient would be rescaled per weight.

The learning rate is an argument of `step`, not of the optimizer, so a schedule (see
`slidenet.training.schedules`) can change it every step. State (velocities, moments, the step count)
is saved as plain arrays (`state_arrays`) so a resumed run continues bit for bit.

With the compiled kernels (`ops.compiled_step`) each array's update is one pass in place: the
same float operations in the same order as the NumPy expressions below, so the same bits
(tested), without their temporaries and the few NumPy calls per array that dominate a step at
small batches. The NumPy expressions remain the reference and the path without numba.
"""
import numpy as np

from slidenet.errors import ModelFileError, SlidenetError
from slidenet.ops import compiled_step


def decays(name):
    """Whether weight decay applies to the parameter `name`: weights (``.W``) only."""
    return name.endswith(".W")


def _check_fraction(what, value):
    """A decay rate such as momentum or beta1 must lie in [0, 1) to forget old gradients."""
    if not 0.0 <= value < 1.0:
        raise SlidenetError(f"{what} must be in [0, 1); got {what}={value!r}")
    return float(value)


class Optimizer:
    """Base class: holds the params, the per-parameter state slots and a scratch buffer.

    params: ordered dict name -> float array, updated in place by `step`.
    weight_decay: L2 strength for weights (``.W``) only; >= 0.

    Subclasses set `name`, `slots` (kinds of per-parameter state, e.g. ``("v",)``),
    `hyper_names` (constructor arguments reported by `config`) and `_update`.
    """

    name = ""
    slots = ()
    hyper_names = ("weight_decay",)

    def __init__(self, params, weight_decay=0.0):
        if not weight_decay >= 0.0:
            raise SlidenetError(f"weight_decay must be >= 0; got weight_decay={weight_decay!r}")
        self.params = params
        self.weight_decay = float(weight_decay)
        self.t = 0
        # State lives in the params' dtype so float32 nets stay float32 throughout.
        self.state = {slot: {n: np.zeros_like(p) for n, p in params.items()}
                      for slot in self.slots}
        # One scratch array per parameter, made on the NumPy path's first use: steps then
        # allocate nothing (the compiled path needs none).
        self._scratch = {}

    def step(self, grads, lr):
        """One update of every parameter from `grads` (same names and shapes) at rate `lr`."""
        # A Python float is "weak" in NumPy's casting, so float32 arrays compute in float32;
        # the compiled path is given each scalar converted the same way (`p.dtype.type`).
        lr = float(lr)
        self.t += 1
        for name, p in self.params.items():
            g = grads[name]
            fast = self._compiled(name, p, g)
            if fast is not None:
                # On the calling thread: shared by two workers, R1's largest update (fc1's
                # W) was slower (docs/benchmarks.md, "R1 training: round 5").
                self._fused(fast, name, p.reshape(-1), g.reshape(-1), lr, p.dtype.type)
                continue
            scratch = self._scratch.get(name)
            if scratch is None:
                scratch = self._scratch[name] = np.empty_like(p)
            self._update(name, p, g, lr, scratch)

    def _compiled(self, name, p, g):
        """`compiled_step`'s kernels when p, g and p's state are C-contiguous arrays of one
        float dtype (flat views of them are then the arrays themselves), else None."""
        if p.dtype != g.dtype or p.shape != g.shape or not p.flags.c_contiguous \
                or not g.flags.c_contiguous:
            return None
        if any(not per[name].flags.c_contiguous for per in self.state.values()):
            return None
        return compiled_step.kernels(p, g)

    def _update(self, name, p, g, lr, scratch):
        raise NotImplementedError

    def _fused(self, fast, name, p, g, lr, scalar):
        """_update's arithmetic by `fast`'s kernel on p, g (P,), flat views; p's state is
        flattened likewise. scalar: p's dtype's scalar type, for the hyper-parameters as NumPy
        would convert them."""
        raise NotImplementedError

    def _decay(self, name):
        """The L2 strength for `name`: weight_decay for weights (``.W``), else 0."""
        return self.weight_decay if self.weight_decay and decays(name) else 0.0

    def _l2_grad(self, name, p, g, out):
        """Write ``g + wd * p`` (the L2 term) into `out` for decayed weights, else just `g`."""
        if self.weight_decay and decays(name):
            np.multiply(p, self.weight_decay, out=out)
            out += g
        else:
            np.copyto(out, g)
        return out

    def config(self):
        """The name and hyper-parameters, JSON-able: ``make_optimizer(**config, params=...)``."""
        return {"name": self.name, **{k: getattr(self, k) for k in self.hyper_names}}

    def state_arrays(self):
        """A snapshot of the state as ``{"v/conv1.W": array, ..., "t": int64 0-d}``."""
        arrays = {f"{slot}/{n}": a.copy()
                  for slot, per in self.state.items() for n, a in per.items()}
        arrays["t"] = np.array(self.t, dtype=np.int64)
        return arrays

    def load_state_arrays(self, arrays):
        """Restore state saved by `state_arrays` (any mapping, e.g. an opened ``.npz``).

        Raises ModelFileError when the names or shapes do not match this optimizer and params,
        e.g. a file saved by another optimizer or for another net.
        """
        expected = set(self.state_arrays())
        given = set(arrays.keys())
        if given != expected:
            missing = sorted(expected - given)
            extra = sorted(given - expected)
            raise ModelFileError(f"{self.name} optimizer state does not match: "
                                 f"missing {missing}, unexpected {extra}")
        t = np.asarray(arrays["t"])
        if t.shape != () or t.dtype.kind not in "iu" or t < 0:
            raise ModelFileError(f"optimizer step count 't' must be a non-negative integer; "
                                 f"got {t!r}")
        for slot, per in self.state.items():
            for n, a in per.items():
                src = np.asarray(arrays[f"{slot}/{n}"])
                if src.shape != a.shape:
                    raise ModelFileError(f"optimizer state '{slot}/{n}' has shape {src.shape}, "
                                         f"the parameter has {a.shape}")
                np.copyto(a, src)
        self.t = int(t)


class SGD(Optimizer):
    """Vanilla gradient descent: ``w -= lr * (g + wd * w)``."""

    name = "sgd"

    def _update(self, name, p, g, lr, scratch):
        step = self._l2_grad(name, p, g, scratch)
        step *= lr
        p -= step

    def _fused(self, fast, name, p, g, lr, scalar):
        fast.sgd(p, g, scalar(lr), scalar(self._decay(name)))


class Momentum(Optimizer):
    """Momentum (cs231n form): ``v = mu * v - lr * g'``, ``w += v``.

    momentum: mu in [0, 1), how much of the previous velocity survives each step.
    """

    name = "momentum"
    slots = ("v",)
    hyper_names = ("momentum", "weight_decay")

    def __init__(self, params, momentum=0.9, weight_decay=0.0):
        self.momentum = _check_fraction("momentum", momentum)
        super().__init__(params, weight_decay)

    def _update(self, name, p, g, lr, scratch):
        v = self.state["v"][name]
        step = self._l2_grad(name, p, g, scratch)
        step *= lr
        v *= self.momentum
        v -= step
        p += v

    def _fused(self, fast, name, p, g, lr, scalar):
        fast.momentum(p, g, self.state["v"][name].reshape(-1), scalar(lr),
                      scalar(self._decay(name)), scalar(self.momentum))


class Nesterov(Momentum):
    """Nesterov momentum (cs231n form), which evaluates the gradient at the look-ahead point.

    ``v_prev = v; v = mu * v - lr * g'; w += -mu * v_prev + (1 + mu) * v``.
    """

    name = "nesterov"

    def _update(self, name, p, g, lr, scratch):
        mu = self.momentum
        v = self.state["v"][name]
        step = self._l2_grad(name, p, g, scratch)
        step *= lr
        v *= mu
        p -= v                 # the -mu * v_prev term, while v still holds mu * v_prev
        v -= step              # v = mu * v_prev - lr * g'
        np.multiply(v, 1.0 + mu, out=scratch)
        p += scratch

    def _fused(self, fast, name, p, g, lr, scalar):
        mu = self.momentum
        fast.nesterov(p, g, self.state["v"][name].reshape(-1), scalar(lr),
                      scalar(self._decay(name)), scalar(mu), scalar(1.0 + mu))


class Adam(Optimizer):
    """Adam with bias correction and decoupled weight decay (AdamW).

    ``m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g**2;``
    ``w -= lr * (m / (1-b1**t)) / (sqrt(v / (1-b2**t)) + eps)``.
    The decay ``w -= lr * wd * w`` is applied first, to the weights before this step's update
    (as in Loshchilov & Hutter and PyTorch's AdamW).

    beta1, beta2: decay rates of the first and second moment, in [0, 1).
    eps: keeps the division finite where v is ~0; > 0.
    """

    name = "adam"
    slots = ("m", "v")
    hyper_names = ("beta1", "beta2", "eps", "weight_decay")

    def __init__(self, params, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0):
        self.beta1 = _check_fraction("beta1", beta1)
        self.beta2 = _check_fraction("beta2", beta2)
        if not eps > 0.0:
            raise SlidenetError(f"eps must be > 0; got eps={eps!r}")
        self.eps = float(eps)
        super().__init__(params, weight_decay)

    def _update(self, name, p, g, lr, scratch):
        m, v = self.state["m"][name], self.state["v"][name]
        b1, b2 = self.beta1, self.beta2
        if self.weight_decay and decays(name):
            p *= 1.0 - lr * self.weight_decay
        m *= b1
        np.multiply(g, 1.0 - b1, out=scratch)
        m += scratch
        v *= b2
        np.multiply(g, g, out=scratch)
        scratch *= 1.0 - b2
        v += scratch
        # Early on m and v are biased towards their zero start; dividing by 1 - b**t undoes it.
        np.divide(v, 1.0 - b2 ** self.t, out=scratch)
        np.sqrt(scratch, out=scratch)
        scratch += self.eps
        np.divide(m, scratch, out=scratch)
        scratch *= lr / (1.0 - b1 ** self.t)
        p -= scratch

    def _fused(self, fast, name, p, g, lr, scalar):
        b1, b2 = self.beta1, self.beta2
        keep = 1.0 - lr * self.weight_decay if self.weight_decay and decays(name) else 1.0
        fast.adam(p, g, self.state["m"][name].reshape(-1), self.state["v"][name].reshape(-1),
                  scalar(keep), scalar(b1), scalar(1.0 - b1), scalar(b2), scalar(1.0 - b2),
                  scalar(1.0 - b2 ** self.t), scalar(self.eps),
                  scalar(lr / (1.0 - b1 ** self.t)))


OPTIMIZERS = {cls.name: cls for cls in (SGD, Momentum, Nesterov, Adam)}


def make_optimizer(name, params, *, momentum=0.9, beta1=0.9, beta2=0.999, eps=1e-8,
                   weight_decay=0.0):
    """The optimizer called `name` ("sgd", "momentum", "nesterov", "adam") over `params`.

    params: ordered dict name -> float array (the net's live parameters, updated in place).
    Hyper-parameters an optimizer does not use are ignored (SGD ignores momentum, ...).
    """
    if name not in OPTIMIZERS:
        raise SlidenetError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    cls = OPTIMIZERS[name]
    given = {"momentum": momentum, "beta1": beta1, "beta2": beta2, "eps": eps,
             "weight_decay": weight_decay}
    return cls(params, **{k: given[k] for k in cls.hyper_names})
