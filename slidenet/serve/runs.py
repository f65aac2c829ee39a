"""`slidenet serve RUNS/`: the curves of several runs side by side, with each one's net and
settings (TensorBoard's main use).

    runs = Runs("runs")
    runs.read()     # {"folder", "runs": [{"name", "history", "pattern", "settings", ...}],
                    #  "skipped": [{"name", "why"}]}

A run is a folder holding the history.json that `slidenet train` writes, and usually its
model.npz (whose meta gives the pattern and the settings). The runs are RUNS itself, if it is
one, and the folders right inside it, at most `limits.MAX_RUNS` of them, in name order. Files
are read safely: history.json only up to `limits.MAX_HISTORY` bytes, model files through
`modelfile.load` (its size checks and checksum), and nothing a request names: the folder is fixed on the command line
and every request reads the same files. A run whose files are missing, too large or damaged is
listed in "skipped" with the reason; the others are still shown. What was read is kept until a
file's size or modification time changes, so a run still training shows its new epochs.
"""
import json
import os
import threading

from slidenet.storage import modelfile
from slidenet.errors import SlidenetError
from slidenet.storage import limits
from slidenet.storage.limits import MAX_HISTORY
from slidenet.viz.curves import check_history

SETTINGS = ("data", "epochs", "batch_size", "lr", "optimizer", "momentum", "weight_decay",
            "schedule", "loss", "augment", "flip", "val_fraction", "seed", "variables")
SECTIONS = (("curves", "Curves"), ("runs", "Runs"))


def _stamp(path):
    """(size, mtime) of a file, or None when there is none."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return (status.st_size, status.st_mtime_ns)


class Runs:
    """The runs in `folder` (see the module docstring)."""

    def __init__(self, folder):
        if not os.path.isdir(folder):
            raise SlidenetError(f"{folder}: no such folder of runs")
        self.folder = folder
        self.lock = threading.Lock()
        self._cache = {}        # path -> (stamp, value or SlidenetError)

    def folders(self):
        """(name, path) of every run folder, RUNS itself first if it is one."""
        found = [(os.path.basename(os.path.abspath(self.folder)), self.folder)] \
            if os.path.isfile(os.path.join(self.folder, "history.json")) else []
        with os.scandir(self.folder) as entries:
            inside = sorted((entry.name, entry.path) for entry in entries
                            if entry.is_dir() and
                            os.path.isfile(os.path.join(entry.path, "history.json")))
        return found + inside

    def read(self):
        """Every run's history, pattern and settings; {"folder", "runs", "skipped"}."""
        runs, skipped = [], []
        folders = self.folders()
        if len(folders) > limits.MAX_RUNS:
            skipped += [{"name": name, "why": f"only the first {limits.MAX_RUNS} runs are shown"}
                        for name, _ in folders[limits.MAX_RUNS:]]
        for name, path in folders[:limits.MAX_RUNS]:
            try:
                history = self._cached(os.path.join(path, "history.json"), _history)
                meta = self._meta(path)
            except SlidenetError as err:
                skipped.append({"name": name, "why": str(err)})
                continue
            config = meta.get("config") if isinstance(meta.get("config"), dict) else {}
            runs.append({"name": name, "history": history, "pattern": meta.get("pattern"),
                         "settings": {key: config[key] for key in SETTINGS if key in config},
                         "epoch": meta.get("epoch", len(history)),
                         "best_val_accuracy": max((h["val_accuracy"] for h in history
                                                   if h.get("val_accuracy") is not None),
                                                  default=None)})
        return {"folder": self.folder, "runs": runs, "skipped": skipped}

    def _meta(self, path):
        """The meta of the run's model.npz (else best.npz); {} when it has neither."""
        for name in ("model.npz", "best.npz"):
            file = os.path.join(path, name)
            if os.path.isfile(file):
                return self._cached(file, lambda p: modelfile.load(p)[1])
        return {}

    def _cached(self, path, read):
        stamp = _stamp(path)
        with self.lock:
            kept = self._cache.get(path)
        if kept is None or kept[0] != stamp:
            try:
                value = read(path)
            except SlidenetError as err:
                value = err
            kept = (stamp, value)
            with self.lock:
                self._cache[path] = kept
        if isinstance(kept[1], SlidenetError):
            raise kept[1]
        return kept[1]


def _not_a_number(name):
    raise ValueError(f"{name} is not a number a history holds")


def _history(path):
    """The history list of a history.json, at most MAX_HISTORY bytes of it."""
    size = os.path.getsize(path)
    if size > MAX_HISTORY:
        raise SlidenetError(f"{path} is {size:,} bytes; at most {MAX_HISTORY:,} are read")
    try:
        with open(path, "rb") as fh:
            history = json.loads(fh.read(MAX_HISTORY + 1).decode("utf-8"),
                                 parse_constant=_not_a_number)
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise SlidenetError(f"{path} is not a training history ({err})") from None
    check_history(history, path)
    return history


def create_runs_app(folder, trusted_hosts=None):
    """The Starlette app of `slidenet serve RUNS/`: GET / (the page) and GET /api/runs."""
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from starlette.templating import Jinja2Templates

    from slidenet.serve import pages
    from slidenet.serve.app import HEADERS, site

    runs = Runs(folder)
    templates = Jinja2Templates(env=pages.environment())

    async def page(request):
        return templates.TemplateResponse(request, "runs.html", {
            "inline_style": False, "pattern": "", "stats": (), "sections": SECTIONS,
            "folder": folder}, headers=HEADERS)

    async def answer(request):
        return JSONResponse(await run_in_threadpool(runs.read))

    return site([Route("/", page), Route("/api/runs", answer)], trusted_hosts)
