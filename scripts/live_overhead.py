"""How much `slidenet train --live` slows training: the same run without it, with it and no
page open, and with it and a page watching (polling as live.js does), in alternation.

    .venv/bin/python scripts/live_overhead.py [--rounds 4] [--epochs 3] [--data mnist5k]

Each run is a fresh `slidenet train` process; the number compared is the training time of its
epochs after the first from history.json (the `seconds` of each epoch: forward, backward and
update, without loading the data or validating), so start-up costs do not blur it. The modes
alternate, in an order that turns each round, so a machine whose load changes affects them
alike. Prints one line per run and a Markdown table: median images/s, its spread (min-max),
and the median's difference from the run without --live.

    .venv/bin/python scripts/live_overhead.py --inside [--epochs 9]

measures instead, in one watched run, what watching costs the training thread (the seconds in
the Watcher's calls, against the epochs' training seconds), and the speed of the epochs during
which a page asks what live.js asks (every second epoch) against the epochs between them.
"""
import argparse
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ADDRESS = "watch it learn on "
MODES = ("without --live", "--live, no page", "--live, page watching")


def watch(url, stop):
    """Ask what the page asks: progress every second, pictures every 2.5 s, each new epoch."""
    since, epoch_seen, pictures_at = 0, 0, 0.0
    while not stop.is_set():
        try:
            with urllib.request.urlopen(f"{url}/api/progress?since={since}", timeout=30) as r:
                progress = json.loads(r.read())
            if progress["steps"]:
                since = progress["steps"][-1][0]
            if time.monotonic() - pictures_at >= 2.5:
                pictures_at = time.monotonic()
                urllib.request.urlopen(f"{url}/api/pictures", timeout=30).read()
            if progress["epoch_view"] > epoch_seen:
                epoch_seen = progress["epoch_view"]
                urllib.request.urlopen(f"{url}/api/epoch", timeout=30).read()
        except OSError:
            pass
        stop.wait(1.0)


def one_run(mode, epochs, data, folder):
    out = os.path.join(folder, f"run{time.monotonic_ns()}")
    command = [sys.executable, "-m", "slidenet", "train", "--epochs", str(epochs), "--data", data,
               "--out", out]
    if mode:
        command += ["--live", "--port", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    stop = threading.Event()
    watcher = None
    for line in process.stdout:
        if ADDRESS in line and mode == 2:
            url = line.split(ADDRESS)[1].split()[0].rstrip("/")
            watcher = threading.Thread(target=watch, args=(url, stop), daemon=True)
            watcher.start()
        if "now explains" in line:      # with --live the process waits for Ctrl-C from here
            break
    stop.set()
    if mode:
        process.send_signal(signal.SIGINT)
    process.wait(timeout=120)
    if watcher:
        watcher.join(timeout=5)
    with open(os.path.join(out, "history.json")) as fh:
        history = json.load(fh)
    timed = history[1:] or history     # the first epoch also warms caches up
    seconds = sum(h["seconds"] for h in timed)
    images = sum(h["images_per_s"] * h["seconds"] for h in timed)
    return images / seconds, seconds


def inside(epochs, data):
    """One watched run; a page asks what live.js asks during every second epoch only. Prints
    the training thread's seconds in Watcher calls, and the epochs' speed with the page and
    without it (adjacent epochs, so a load that drifts slowly touches both alike)."""
    from slidenet.serve.watch import Watcher
    from slidenet.training.loop import TrainConfig, train

    class Timed(Watcher):
        spent = 0.0

        def step(self, *args):
            began = time.perf_counter()
            super().step(*args)
            Timed.spent += time.perf_counter() - began

        def epoch(self, entry, confusion=None):
            began = time.perf_counter()
            super().epoch(entry, confusion)
            Timed.spent += time.perf_counter() - began

    watcher = Timed(epochs=epochs)
    stop, busy = threading.Event(), [0.0]

    def page():
        since, seen, pictures_at = 0, 0, 0.0
        while not stop.wait(1.0):
            if watcher.last_epoch % 2 == 0:         # epochs 1, 3, 5, ...: nobody watches
                continue
            started = time.perf_counter()
            progress = watcher.progress(since)
            since = progress["steps"][-1][0] if progress["steps"] else since
            if time.monotonic() - pictures_at >= 2.5:
                pictures_at = time.monotonic()
                watcher.pictures()
            if progress["epoch_view"] > seen:
                seen = progress["epoch_view"]
                watcher.epoch_view()
            busy[0] += time.perf_counter() - started

    thread = threading.Thread(target=page)
    thread.start()
    used = resource.getrusage(resource.RUSAGE_SELF)
    with tempfile.TemporaryDirectory() as folder:
        history = train(TrainConfig(epochs=epochs, data=data, out=folder),
                        log=lambda *_: None, observer=watcher)
    stop.set()
    thread.join()
    now = resource.getrusage(resource.RUSAGE_SELF)
    process = now.ru_utime + now.ru_stime - used.ru_utime - used.ru_stime
    training = sum(h["seconds"] for h in history)
    speed = [h["images_per_s"] for h in history]
    watched = speed[1::2]
    alone = speed[2::2]                 # the first epoch warms up: left out
    print(f"training: {training:.1f} s in {len(history)} epochs; load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"training thread in the Watcher's calls: {Timed.spent * 1000:.1f} ms "
          f"({100 * Timed.spent / training:.3f}% of the training seconds)")
    print(f"epochs without a page: {' '.join(f'{v:.0f}' for v in alone)} img/s, median "
          f"{statistics.median(alone):.0f}")
    print(f"epochs with a page:    {' '.join(f'{v:.0f}' for v in watched)} img/s, median "
          f"{statistics.median(watched):.0f} "
          f"({100 * (statistics.median(watched) / statistics.median(alone) - 1):+.1f}%); "
          f"the page's calls took {busy[0]:.1f} s of wall time")
    print(f"the painter's CPU: {watcher.painter_seconds:.2f} s of the process's {process:.1f} s "
          f"({100 * watcher.painter_seconds / process:.1f}%), with a page during half the epochs")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--data", default="mnist5k")
    parser.add_argument("--inside", action="store_true",
                        help="measure the Watcher's own cost in one process instead")
    args = parser.parse_args()
    if args.inside:
        inside(args.epochs, args.data)
        return
    results = {mode: [] for mode in range(len(MODES))}
    with tempfile.TemporaryDirectory() as folder:
        for round_ in range(args.rounds):
            # The order turns each round, so no mode is always first (or last) of a round.
            for mode in [(round_ + k) % len(MODES) for k in range(len(MODES))]:
                speed, seconds = one_run(mode, args.epochs, args.data, folder)
                results[mode].append(speed)
                print(f"round {round_ + 1}: {MODES[mode]:<24} {speed:7.0f} img/s "
                      f"({seconds:.1f} s of training; load average "
                      f"{os.getloadavg()[0]:.1f})", flush=True)
    base = statistics.median(results[0])
    print()
    print("| mode | runs | median img/s | spread (min-max) | vs. without --live |")
    print("|---|---:|---:|---:|---:|")
    for mode, name in enumerate(MODES):
        speeds = results[mode]
        median = statistics.median(speeds)
        print(f"| {name} | {len(speeds)} | {median:.0f} | {min(speeds):.0f}-{max(speeds):.0f} | "
              f"{100 * (median / base - 1):+.1f}% |")


if __name__ == "__main__":
    main()
