"""Running `slidenet serve` for tests: a real server in a subprocess on a free port."""
import io
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager

import numpy as np
from PIL import Image

ADDRESS = re.compile(r"on (http://\S+?)/? ")


def png_bytes(pixels, format="PNG"):
    """uint8 (H, W, 1 or 3) as the bytes of a PNG (or JPEG) file."""
    buffer = io.BytesIO()
    image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    image.save(buffer, format=format)
    return buffer.getvalue()


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


def image_like(shape, seed=0):
    """A uint8 image (H, W, D) of noise with a bright bar, so every layer has something to do."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 60, size=shape).astype(np.uint8)
    pixels[shape[0] // 3, :] = 230
    return pixels
