"""Watching a net learn: what `slidenet train --live` shows, worked out beside the training.

    watcher = Watcher(epochs=15)
    train(config, observer=watcher)     # the training thread tells it of every step and epoch
    watcher.progress(since=120)         # the web server's threads ask it what to show
    watcher.pictures()                  # conv1's filters; fixed validation images, maps, guesses
    watcher.epoch_view()                # the confusion matrix and the worst-classified images

Training must not slow down for the page, so the training thread does only cheap things in
its calls: it appends the step's loss, and copies the weights (a few MB at most) at a step
boundary when a page has asked for pictures lately and the last copy is SNAPSHOT_EVERY seconds
old, and at the end of every epoch. Everything else (a forward pass of the copied weights
through a net of its own, the pictures, the confusion matrix) is done when a page asks, once
per copy, by one painter thread: its kernels run on it alone (`runtime.on_this_thread`, so
training keeps the worker threads), and on Linux it runs at the lowest CPU priority (nice 19),
so on a busy machine it takes the time training leaves. No web server is needed in here.
"""
import base64
import io
import math
import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from slidenet.net import Net
from slidenet.ops import runtime
from slidenet.ops.losses import softmax
from slidenet.training.loop import Observer
from slidenet.viz import grid
from slidenet.viz.filters import filter_weights
from slidenet.viz.probe import has_filters

STEPS_KEPT = 20_000         # step losses kept for the curve (a long run keeps its latest)
SNAPSHOT_EVERY = 5.0        # seconds between weight copies while a page is watching
WATCHED_FOR = 10.0          # a page is watching for this long after it last asked for pictures
RATE_WINDOW = 30.0          # seconds of steps that images/s and the time left are measured over
SAMPLES = 8                 # fixed validation images shown with their maps and predictions
WORST = 12                  # worst-classified validation images shown after each epoch ...
WORST_POOL = 128            # ... among the first this many (a forward pass of all would cost
                            # as much as the training's own validation pass, once more)
MAP_CHANNELS = 16           # activation maps drawn per sample
FILTER_PIXELS = 8           # screen pixels per weight of a drawn filter
# Colour ramps from the low to the high end of a scale (those of the explainer's page).
DIVERGING = np.array([[33, 102, 172], [146, 197, 222], [247, 247, 247], [244, 165, 130],
                      [178, 24, 43]], dtype=np.float64)
SEQUENTIAL = np.array([[12, 7, 38], [59, 41, 120], [33, 120, 142], [72, 180, 110],
                       [240, 225, 60]], dtype=np.float64)
GAP = np.array([232, 232, 232], dtype=np.uint8)


def colour(values, stops):
    """values in [0, 1] (NaN: a gap) -> uint8 RGB (..., 3), linear between the stops."""
    x = np.clip(np.nan_to_num(values, nan=0.0), 0, 1) * (len(stops) - 1)
    k = np.minimum(len(stops) - 2, np.floor(x).astype(int))
    f = (x - k)[..., None]
    rgb = np.rint(stops[k] + (stops[k + 1] - stops[k]) * f).astype(np.uint8)
    rgb[np.isnan(values)] = GAP
    return rgb


def on_scale(maps):
    """maps (..., H, W) -> RGB on one scale: diverging around zero when any is negative,
    sequential from zero otherwise (as the explainer draws them). Returns (rgb, low, high)."""
    low, high = float(np.nanmin(maps)), float(np.nanmax(maps))
    if low < 0:
        limit = max(-low, high, 1e-12)
        return colour((maps / limit + 1) / 2, DIVERGING), -limit, limit
    limit = max(high, 1e-12)
    return colour(maps / limit, SEQUENTIAL), 0.0, limit


def png_uri(rgb, scale=1):
    """uint8 (H, W) or (H, W, 3), each pixel drawn `scale` x `scale`, as a PNG data URI."""
    from PIL import Image
    if scale > 1:
        rgb = np.repeat(np.repeat(rgb, scale, axis=0), scale, axis=1)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def image_uri(pixels):
    """uint8 (H, W, 1 or 3) as a PNG data URI."""
    return png_uri(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)


def lowest_priority():
    """Make the calling thread the last to get a core (Linux: threads have their own nice
    value); elsewhere, or where it is not allowed, it stays as it is."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):
        pass


def pick_samples(y, count=SAMPLES):
    """Indices of `count` validation images, fixed for the run: the first of each class in
    turn, so that as many classes as possible are shown."""
    picked, rounds = [], {}
    for i, label in enumerate(y.tolist()):
        rounds.setdefault(label, []).append(i)
    while len(picked) < min(count, len(y)):
        for label in sorted(rounds):
            if rounds[label] and len(picked) < count:
                picked.append(rounds[label].pop(0))
    return picked


class Watcher(Observer):
    """The state of one training run, told by `train` and asked by the web server.

    epochs: the run's planned epochs, shown until `train` starts (a resumed run's own count
    replaces it); clock: seconds, monotonic (tests pass their own).
    """

    def __init__(self, epochs=0, clock=time.monotonic):
        self.clock = clock
        self.lock = threading.Lock()            # guards everything below
        self.render_lock = threading.Lock()     # one rendering at a time, on the server's side
        self.watched = None                     # train.Watched, once started
        self.epochs = epochs
        self.steps = deque(maxlen=STEPS_KEPT)   # (step, loss)
        self.rate = deque()                     # (time, step, images seen): the speed
        self.images = 0
        self.step_now = 0
        self.lr = None
        self.last_epoch = 0
        self.asked = -math.inf                  # when a page last asked for pictures
        self.copied = -math.inf                 # when the weights were last copied
        self.weights = None                     # (version, {name: array}) of the last copy
        self.epoch_weights = None               # (epoch, {name: array}, confusion) at the
                                                # last epoch's end
        self.state = "starting"                 # starting | training | finished | stopped
        self.best = None                        # best.npz once the run has finished
        self._shadow = None                     # a Net of the run's pattern, for the server
        self._pictures = (None, None)           # (weights version, answer)
        self._epoch_view = (None, None)         # (epoch, answer)
        self._painter = ThreadPoolExecutor(1, thread_name_prefix="slidenet-painter",
                                           initializer=lowest_priority)
        self.painter_seconds = 0.0              # CPU seconds the painter has spent

    # ---- told by train, on the training thread ----

    def start(self, watched):
        with self.lock:
            self.watched = watched
            self.epochs = watched.config.epochs
            self.step_now = watched.start_epoch * watched.steps_per_epoch
            self.last_epoch = watched.start_epoch
            self.samples = pick_samples(watched.y_val) if len(watched.y_val) else []
            self.state = "training"
            self._copy()
            if watched.start_epoch:
                self.epoch_weights = (watched.start_epoch, self.weights[1], None)

    def step(self, step, loss, images, lr):
        now = self.clock()
        with self.lock:
            self.steps.append((step, float(loss)))
            self.images += images
            self.rate.append((now, step, self.images))
            while len(self.rate) > 2 and now - self.rate[0][0] > RATE_WINDOW:
                self.rate.popleft()
            self.step_now, self.lr = step, float(lr)
            if now - self.asked < WATCHED_FOR and now - self.copied >= SNAPSHOT_EVERY:
                self._copy()

    def epoch(self, entry, confusion=None):
        with self.lock:
            self.last_epoch = entry["epoch"]
            self._copy()
            self.epoch_weights = (entry["epoch"], self.weights[1], confusion)

    def _copy(self):
        """Copy the live net's weights (under self.lock, between steps)."""
        net = self.watched.net
        copied = {name: array.copy() for name, array in (*net.params.items(),
                                                          *net.buffers.items())}
        version = self.weights[0] + 1 if self.weights else 1
        self.weights = (version, copied)
        self.copied = self.clock()

    # ---- told by the command ----

    def finish(self, best=None):
        """Training has ended: `best` is the best.npz the page now explains (None: stopped)."""
        with self.lock:
            self.state = "finished" if best else "stopped"
            self.best = best

    # ---- asked by the web server, on its threads ----

    def progress(self, since=0):
        """The run so far as JSON-ready data; `steps` holds the step losses after `since`."""
        with self.lock:
            watched = self.watched
            steps = [[s, loss] for s, loss in self.steps if s > since]
            speed = self._speed()
            answer = {"state": self.state, "done": self.state in ("finished", "stopped"),
                      "epoch": self.last_epoch, "epochs": self.epochs, "step": self.step_now,
                      "steps": steps, "lr": self.lr, "best": self.best,
                      "pictures": self.weights[0] if self.weights else 0,
                      "epoch_view": self.epoch_weights[0] if self.epoch_weights else 0}
        answer.update(speed)
        if watched is None:
            answer.update({"history": [], "steps_per_epoch": None, "pattern": None,
                           "settings": {}, "classes": []})
            return answer
        config = watched.config
        answer.update({
            "history": [dict(entry) for entry in list(watched.history)],
            "steps_per_epoch": watched.steps_per_epoch, "start_epoch": watched.start_epoch,
            "pattern": watched.net.pattern, "classes": watched.class_names,
            "settings": {key: getattr(config, key) for key in (
                "data", "epochs", "batch_size", "lr", "optimizer", "schedule", "weight_decay",
                "loss", "augment", "seed", "out")}})
        return answer

    def _speed(self):
        """images_per_s and seconds_left over the last RATE_WINDOW seconds of steps."""
        if len(self.rate) < 2 or self.watched is None:
            return {"images_per_s": None, "seconds_left": None}
        (t0, s0, i0), (t1, s1, i1) = self.rate[0], self.rate[-1]
        if t1 <= t0 or s1 <= s0:
            return {"images_per_s": None, "seconds_left": None}
        config = self.watched.config
        last = config.epochs if not config.stop_after else \
            min(config.epochs, self.watched.start_epoch + config.stop_after)
        left = max(0, last * self.watched.steps_per_epoch - s1)
        return {"images_per_s": (i1 - i0) / (t1 - t0),
                "seconds_left": left * (t1 - t0) / (s1 - s0)}

    def _net(self, weights):
        """The server's own net of the run's pattern, holding `weights`."""
        if self._shadow is None:
            net = self.watched.net
            self._shadow = Net(net.pattern, net.variables, net.skip_optional, 0, net.dtype)
        for name, array in weights.items():
            target = self._shadow.params.get(name)
            target = self._shadow.buffers[name] if target is None else target
            target[...] = array
        return self._shadow

    def pictures(self):
        """conv1's filters and the fixed validation images with their maps and predictions,
        drawn from the latest copy of the weights (redrawn only when there is a newer one).

        {"version", "filters": {"layer", "text", "shape", "uri", "low", "high"} or None,
         "samples": [{"index", "label", "uri", "maps": {"layer", "uri", "low", "high",
         "channels"}, "top": [{"name", "probability"}]}]}; {"version": 0} before training.
        """
        with self.lock:
            self.asked = self.clock()
            weights = self.weights
        if weights is None:
            return {"version": 0, "filters": None, "samples": []}
        with self.render_lock:
            if self._pictures[0] != weights[0]:
                self._pictures = (weights[0], self._paint(self._draw, weights))
            return self._pictures[1]

    def _paint(self, work, weights):
        """work(weights), on the painter thread, its kernels on that thread alone."""
        def painted():
            began = time.thread_time()
            try:
                with runtime.on_this_thread():
                    return work(weights)
            finally:
                self.painter_seconds += time.thread_time() - began
        return self._painter.submit(painted).result()

    def _draw(self, weights):
        version, arrays = weights
        watched = self.watched
        net = self._net(arrays)
        answer = {"version": version, "filters": self._filters(net), "samples": []}
        if not self.samples:
            return answer
        pixels = watched.x_val[self.samples]
        outputs = net.activations(watched.normalizer.normalize(pixels))
        probs = softmax(outputs[-1][1].astype(np.float64))
        index, name = self._map_layer(net)
        maps = outputs[index][1] if index is not None else None
        for k, i in enumerate(self.samples):
            best = np.argsort(-probs[k])[:3]
            sample = {"index": int(i), "label": watched.class_names[int(watched.y_val[i])],
                      "uri": image_uri(pixels[k]),
                      "top": [{"name": watched.class_names[c], "probability": float(probs[k, c])}
                              for c in best]}
            if maps is not None:
                shown = np.moveaxis(maps[k][..., :MAP_CHANNELS], -1, 0)      # (C, H, W)
                tiles, _ = grid.mosaic(shown, cols=min(4, len(shown)), gap=1)
                rgb, low, high = on_scale(tiles)
                sample["maps"] = {"layer": name, "uri": png_uri(rgb, 2), "low": low,
                                  "high": high, "channels": int(len(shown))}
            answer["samples"].append(sample)
        return answer

    @staticmethod
    def _filters(net):
        """The first CONV's filters as one picture: in colour for an RGB input, on one
        diverging scale for one channel, the first input channel's slice otherwise."""
        if not any(has_filters(info) for info in net.infos[1:]):
            return None
        info, w = filter_weights(net)
        w = np.asarray(w, dtype=np.float64)
        fh, fw, d, k = w.shape
        if d == 3:
            tiles = np.stack([grid.stretch(w[..., i]) for i in range(k)])   # (K, F_h, F_w, 3)
            image, _ = grid.mosaic(tiles, cols=grid.columns(k, widest=8), fill=np.nan)
            rgb = np.where(np.isnan(image), GAP / 255.0, image)
            rgb, low, high = np.rint(rgb * 255).astype(np.uint8), float(w.min()), float(w.max())
        else:
            image, _ = grid.mosaic(np.moveaxis(w[:, :, 0, :], -1, 0),
                                   cols=grid.columns(k, widest=8))
            rgb, low, high = on_scale(image)
        return {"layer": info.name, "text": info.spec.text, "shape": [fh, fw, d, k],
                "uri": png_uri(rgb, FILTER_PIXELS), "low": low, "high": high,
                "channel_shown": None if d in (1, 3) else 0}

    @staticmethod
    def _map_layer(net):
        """(position in net.activations, name) of the maps drawn per sample: the first CONV's,
        after its nonlinearity when one follows (what the next layer reads)."""
        infos = net.infos
        first = next((info for info in infos[1:] if has_filters(info)), None)
        if first is None or len(first.output_shape) != 3:
            return None, None
        after = infos[first.index + 1] if first.index + 1 < len(infos) else None
        if after is not None and after.output_shape == first.output_shape and \
                after.params == 0 and after.window is None and after.spec.type.maps:
            return after.index, after.name
        return first.index, first.name

    def epoch_view(self):
        """After each epoch: the validation confusion matrix (the one the training's own
        validation pass counted) and, of the weights at the epoch's end, the WORST images of
        the first WORST_POOL validation images by the probability given to their true class.

        {"epoch", "classes", "confusion" (C x C counts, row: true class, column: predicted),
         "accuracy", "worst": [{"index", "uri", "label", "predicted", "probability" (of the
         true class), "top"}]}; {"epoch": 0} before the first epoch has ended.
        """
        with self.lock:
            weights = self.epoch_weights
        if weights is None or not len(self.watched.y_val):
            return {"epoch": 0}
        with self.render_lock:
            if self._epoch_view[0] != weights[0]:
                self._epoch_view = (weights[0], self._paint(self._evaluate, weights))
            return self._epoch_view[1]

    def _evaluate(self, weights):
        epoch, arrays, counted = weights
        watched = self.watched
        net = self._net(arrays)
        names = watched.class_names
        x, y = watched.x_val[:WORST_POOL], watched.y_val[:WORST_POOL]
        probs = softmax(net.forward(watched.normalizer.normalize(x)).astype(np.float64))
        probs = probs[:, :len(names)]
        predicted = probs.argmax(axis=1)
        if counted is None:     # a resumed run's first view: count the pool
            counted = np.zeros((len(names), len(names)), dtype=np.int64)
            np.add.at(counted, (y, predicted), 1)
        confusion = np.asarray(counted, dtype=np.int64)
        truth = probs[np.arange(len(y)), y]
        worst = np.argsort(truth, kind="stable")[:WORST]
        return {"epoch": epoch, "classes": names, "confusion": confusion.tolist(),
                "images": int(confusion.sum()), "pool": int(len(y)),
                "accuracy": float(np.trace(confusion) / max(1, confusion.sum())),
                "worst": [{"index": int(i), "uri": image_uri(x[i]), "label": names[int(y[i])],
                           "predicted": names[int(predicted[i])],
                           "probability": float(truth[i]),
                           "top": [{"name": names[c], "probability": float(probs[i, c])}
                                   for c in np.argsort(-probs[i])[:3]]} for i in worst]}
