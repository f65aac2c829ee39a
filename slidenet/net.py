"""A network: the layers of a pattern, run forward to scores and backward to gradients.

    net = Net.from_pattern("INPUT(32x32x3) -> [CONV(32) -> RELU]*2 -> POOL -> FC(10)")
    scores = net.forward(x)            # x: (batch, 32, 32, 3) -> scores: (batch, 10)
    loss, dscores = softmax_loss(scores, y)
    net.backward(dscores)              # fills net.grads; returns d loss / d x

Every shape is inferred when the net is built, so a geometry that does not fit fails here,
before any data is loaded.

`net.layers` holds one layer per layer of the pattern; `net.steps` is what forward and backward
run: the same layers with CONV -> RELU and the like fused into one step (`slidenet.layers.fusion`).
`net.activations(x)` runs the layers one by one, so each layer's own output can be seen.

A net with branches (``{ ... | ... } -> ADD``) is still a chain at the top: a merge is one layer
of it that holds its branches' layers (`slidenet.layers.merge`). `params`, `grads` and `buffers`
name every layer's arrays, branches included ("conv3.W"). A net may end on a 1 x 1 x C volume
(a global-average-pool head, no FC): its C numbers are the scores.
"""
import html
from collections import OrderedDict

import numpy as np

from slidenet import layers as layer_kinds
from slidenet.errors import DataError, OutOfMemory, SlidenetError
from slidenet.notation import zoo
from slidenet.notation.pattern import parse
from slidenet.notation.shapes import infer, walk_infos
from slidenet.notation.summary import summary_html, summary_text
from slidenet.ops.runtime import blas_for_workers, image_chunks, run_chunks, split
from slidenet.storage.limits import MAX_WEIGHT_BYTES

DTYPES = ("float32", "float64")


class Net:
    """Layers built from a pattern.

    params / grads / buffers: ordered dicts of "layer.key" -> live NumPy array, in layer order
    (for each CONV/FC its weight "W" then its bias "b"). Updating `params` in place changes the
    net; `backward` overwrites `grads` in place, so the dicts can be held on to.
    """

    def __init__(self, pattern, variables, skip_optional, seed, dtype, blank=False, infos=None):
        if dtype not in DTYPES:
            raise SlidenetError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
        self.pattern = zoo.resolve(pattern)    # a model file keeps the pattern itself
        pattern = self.pattern
        self.variables = dict(variables)
        self.skip_optional = skip_optional
        self.seed = seed
        self.dtype = np.dtype(dtype)
        # infos: what `infer` made of this very pattern, from a caller that needed the shapes
        # before deciding to build (an import): a long pattern is not parsed and walked twice.
        self.infos = infos if infos is not None else \
            infer(parse(pattern, self.variables, skip_optional), pattern)
        weight_bytes = sum(info.params for info in self.infos) * self.dtype.itemsize
        if weight_bytes > MAX_WEIGHT_BYTES:
            raise SlidenetError(
                f"this net needs {weight_bytes / 2**30:.1f} GiB of {dtype} weights, more than the "
                f"{MAX_WEIGHT_BYTES / 2**30:.0f} GiB slidenet allocates; `slidenet summary` describes "
                "it without allocating anything")
        # Dropout draws from its own stream, so adding dropout never changes the initial weights.
        self.dropout_rng = np.random.default_rng([seed, 1])
        # A blank net's weights, and its gradients: views of one buffer each, room for every
        # parameter and its alignment (anything past it is allocated on its own).
        arenas = (None, None)
        if blank:
            every = list(walk_infos(self.infos))
            count = sum(info.params for info in every) + 2 * layer_kinds.Arena.ALIGN * len(every)
            arenas = layer_kinds.Arena(count, self.dtype), layer_kinds.Arena(count, self.dtype)
        init = layer_kinds.Init(np.random.default_rng(seed), self.dropout_rng, self.dtype,
                                blank=blank, arena=arenas[0], grads_arena=arenas[1])
        last = self.infos[-1]
        self.layers = [layer_kinds.build(info, init._replace(scoring=info is last))
                       for info in self.infos[1:]]
        self.steps = layer_kinds.fuse(self.layers)
        self.params, self.grads, self.buffers = OrderedDict(), OrderedDict(), OrderedDict()
        for layer in self.every_layer():
            for key, value in layer.params.items():
                self.params[f"{layer.name}.{key}"] = value
                self.grads[f"{layer.name}.{key}"] = layer.grads[key]
            for key, value in layer.buffers.items():
                self.buffers[f"{layer.name}.{key}"] = value

    @classmethod
    def from_pattern(cls, pattern, seed=0, dtype="float32", skip_optional=False, blank=False,
                     **variables):
        """Parse `pattern`, infer every shape, and initialise the weights from `seed` (all
        zeros when `blank`, for weights that are read from a file next)."""
        return cls(pattern, variables, skip_optional, seed, dtype, blank)

    @classmethod
    def from_infos(cls, pattern, infos, dtype="float32", skip_optional=False, **variables):
        """A blank net (zeros, for weights read next) of `pattern`, whose shapes the caller
        has already inferred: `infos` is `infer(parse(pattern, variables, skip_optional))`."""
        return cls(pattern, variables, skip_optional, 0, dtype, blank=True, infos=infos)

    def every_layer(self):
        """Every layer, branches included (each branch's layers before their merge)."""
        return layer_kinds.leaves(self.layers)

    def dropped_biases(self):
        """{"conv1.b": "batchnorm1", ...}: the biases a CONV or FC before BATCHNORM no longer has,
        each with that BATCHNORM, whose running mean absorbs an old model file's bias."""
        dropped, layers = {}, list(self.every_layer())
        for layer, after in zip(layers, layers[1:]):
            spec = layer.info.spec
            if layer.has_bias and not spec.bias and "bias" not in spec.given and after.cancels_bias:
                dropped[f"{layer.name}.b"] = after.name
        return dropped

    @property
    def input_shape(self):
        """(height, width, depth) of INPUT."""
        return self.infos[0].output_shape

    @property
    def num_outputs(self):
        """Size of the last layer's output (the number of class scores)."""
        return int(np.prod(self.infos[-1].output_shape))

    def _check_input(self, x):
        if x.ndim != 4 or tuple(x.shape[1:]) != tuple(self.input_shape):
            got = "x".join(str(v) for v in x.shape[1:]) if x.ndim == 4 else f"an array of shape {x.shape}"
            want = "x".join(str(v) for v in self.input_shape)
            raise DataError(f"the input is {got} but the net's INPUT is {want} "
                            f"(arrays are (batch, height, width, depth))")
        return x.astype(self.dtype, copy=False)

    def _release_caches(self):
        # A new forward makes the last one's caches useless. Dropping them first frees their
        # arrays (a CONV's input and output, a BATCHNORM's xhat) for this forward to reuse
        # (`ops.runtime.empty`) instead of faulting in fresh memory while they are still held.
        for layer in self.every_layer():
            layer.cache = None

    def forward(self, x, train=False, frozen=0):
        """x: (batch, H, W, D) matching INPUT. Returns scores (batch, num_outputs).

        frozen: the first `frozen` steps run in evaluation mode even when `train` (no dropout;
        batch normalisation on its running statistics, which stay as they are) and keep no
        caches, since `backward(..., frozen=frozen)` stops before them (transfer learning).
        """
        out = self._check_input(x)
        self._release_caches()
        try:
            with blas_for_workers():    # whoever calls: never more threads than cores
                for index, step in enumerate(self.steps):
                    out = step.forward(out, train and index >= frozen)
                    if index < frozen:
                        for part in layer_kinds.leaves(step.parts):
                            part.cache = None
        except MemoryError:
            raise _out_of_memory(step, len(x), "forward") from None
        return _scores(out)

    def activations(self, x, branches=False):
        """Evaluation-mode forward that keeps every layer's output: [(name, array), ...].

        x: (batch, H, W, D). Without `branches`, the layers of the top-level chain (a merge's
        output, its branches run inside it). With `branches`, every layer of `every_layer()`
        in its order, each branch's layers before their merge: a branch runs its layers one by
        one from the volume before its ``{``, so a CONV's output is seen before its RELU there
        too, and the merge combines the branch outputs kept here.
        """
        out = self._check_input(x)
        self._release_caches()
        kept = [("input", out)]
        with blas_for_workers():
            if branches:
                _keep_outputs(self.layers, out, kept)
            else:
                for layer in self.layers:
                    out = layer.forward(out, False)
                    kept.append((layer.name, out))
        return kept

    def backward(self, dscores, input_grad=True, frozen=0):
        """dscores: (batch, num_outputs), the loss gradient for the last forward.

        Fills `grads` in place and returns the gradient with respect to the input (batch, H, W, D).
        input_grad=False: a training step that needs only `grads` skips the first layer's dx
        (and may get None back). frozen: stop after step `frozen` (as in `forward`): the
        frozen steps' grads are left as they were, and None is returned.
        """
        grad = dscores.astype(self.dtype, copy=False)
        if grad.ndim == 2 and _is_head(self.infos[-1].output_shape):
            # A net ending on 1 x 1 x C: its scores were that volume, flattened.
            grad = grad.reshape(len(grad), *self.infos[-1].output_shape)
        try:
            with blas_for_workers():
                for step in reversed(self.steps[frozen + 1:]):
                    grad = step.backward(grad)
                step = self.steps[frozen]
                grad = step.backward(grad, need_dx=input_grad and not frozen)
                return None if frozen else grad
        except MemoryError:
            raise _out_of_memory(step, len(dscores), "backward") from None

    def prepare(self):
        """This net for inference only: an `InferencePlan` whose steps computed once what can
        be (a CONV's transformed filters) and keep no caches. It is a snapshot: later changes
        to the weights do not reach it; prepare again after training."""
        return InferencePlan(self)

    def summary(self):
        """The summary table as text: shapes, parameters and formulas for every layer."""
        return summary_text(self.infos)

    def _repr_html_(self):
        """The summary table with its formulas, for Jupyter."""
        return (f"<div class='slidenet-net'><p><code>{html.escape(self.pattern)}</code></p>"
                f"{summary_html(self.infos)}</div>")

    def __repr__(self):
        return f"Net({self.pattern!r})"


class InferencePlan:
    """`Net.prepare()`: the net's steps made ready for inference, for `Model.predict` and
    `slidenet serve`, where the same weights score image after image. The scores equal the
    net's evaluation forward (tested); a call costs less, which shows most at batch 1."""

    def __init__(self, net):
        self.net = net
        # BATCHNORM folded into the CONV or FC before it, a merge's RELU applied where it
        # merges (`layers.folding`); every other run fused as `net.steps` fuses it.
        self.steps = [(step, step.prepare()) for step in layer_kinds.inference_steps(net.layers)]
        self.cut = depth_first_cut([step for step, _ in self.steps])

    def forward(self, x):
        """x: (batch, H, W, D) matching INPUT. Returns scores (batch, num_outputs).

        With several workers and a batch of at least `runtime.image_chunks`' size, the steps
        run depth first: each worker takes slices of the batch through every step in turn, one
        hand-over per slice instead of one per layer. The steps before `depth_first_cut` take
        slices of 16 to 32 images (`runtime.image_chunks`), the rest one slice per worker
        (`runtime.split`), so that their GEMMs on small images keep enough rows; where the two
        cuts are the same (batch 64 on two workers), each worker runs every step of its slice
        in one pass. Images do not mix in inference: the scores are those of the whole batch
        layer by layer (tested)."""
        x = self.net._check_input(x)
        n, steps = len(x), len(self.steps)
        chunks = image_chunks(n)
        with blas_for_workers():
            if chunks is None:
                return _scores(self._through(x, 0, steps, n))
            if chunks == split(n):          # one slice per worker already: one pass each
                return np.concatenate(run_chunks(
                    lambda sl: _scores(self._through(x[sl], 0, steps, n)), chunks))
            if self.cut > 0:
                x = np.concatenate(run_chunks(lambda sl: self._through(x[sl], 0, self.cut, n),
                                              chunks))
            if self.cut < steps:
                x = np.concatenate(run_chunks(lambda sl: self._through(x[sl], self.cut, steps, n),
                                              split(n)))
        return _scores(x)

    def _through(self, out, start, stop, batch):
        """Steps start .. stop - 1 on out (a slice of a batch of `batch` images, for the
        error's count)."""
        try:
            for step, run in self.steps[start:stop]:
                out = run(out)
        except MemoryError:
            raise _out_of_memory(step, batch, "forward") from None
        return out


# The smallest output (pixels per image) of a step that a worker runs on slices of a few
# images (`InferencePlan.forward`): below, a slice's GEMMs (F(4x4, 3x3)'s one row per 4 x 4
# tile, an FC's one per image) get too short (docs/benchmarks.md, "res18 inference: depth
# first").
DEPTH_FIRST_PIXELS = 64


def depth_first_cut(steps):
    """The index of the first step whose output has fewer than DEPTH_FIRST_PIXELS pixels per
    image (an FC's or a 1 x 1 head's: one); len(steps) if none has."""
    for i, step in enumerate(steps):
        parts = getattr(step, "parts", None)
        shape = (parts[-1] if parts else step).info.output_shape
        if len(shape) != 3 or shape[0] * shape[1] < DEPTH_FIRST_PIXELS:
            return i
    return len(steps)


def _keep_outputs(layers, x, kept):
    """Run `layers` one by one in evaluation mode from x, appending (name, output) to `kept`
    (a merge's branches first, each from x); returns the last output."""
    for layer in layers:
        if layer.merges:
            x = layer.combine([_keep_outputs(branch, x, kept) for branch in layer.branches])
        else:
            x = layer.forward(x, False)
        kept.append((layer.name, x))
    return x


def _is_head(shape):
    """A 1 x 1 x C volume: a global-average-pool head, whose C numbers are the scores."""
    return len(shape) == 3 and tuple(shape[:2]) == (1, 1)


def _scores(out):
    """The last layer's output; a 1 x 1 x C volume as scores (batch, C). Any other volume is
    returned as it is (batch, H, W, D), as a net ending on a CONV always did."""
    return out.reshape(len(out), -1) if out.ndim == 4 and _is_head(out.shape[1:]) else out


def _out_of_memory(step, batch, direction):
    """The OutOfMemory error for a MemoryError raised inside `step` (a layer, or fused layers)."""
    text = " -> ".join(part.info.spec.text for part in step.parts)
    return OutOfMemory(f"{step.name} ({text})", batch, direction)
