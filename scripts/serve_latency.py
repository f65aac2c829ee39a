"""Server-side latency of `slidenet serve` for one image: the numbers in docs/benchmarks.md.

    .venv/bin/python scripts/serve_latency.py runs/demo/best.npz [--repeats 200]

Times, for one test image of the model's data (PNG bytes, as the page sends them):

    predict         what POST /api/predict does: decode the PNG, `Model.predict`
    look            what POST /api/look does: decode, predict, every layer's output, encoded
    look over HTTP  the same through a live `slidenet serve` on 127.0.0.1 (adds JSON, HTTP)

The first two run in this process, exactly the functions the endpoints call; the third starts
the server in a subprocess. Each is repeated after a few warm-up runs; the table gives the
median, the 10th and 90th percentiles and the fastest run, in milliseconds.
"""
import argparse
import io
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np
from PIL import Image

import slidenet
from slidenet import data as datasets
from slidenet.data import decode_image
from slidenet.serve.explain import Explainer

WARMUP = 10


def timed(work, repeats):
    for _ in range(WARMUP):
        work()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append((time.perf_counter() - start) * 1000)
    return np.array(times)


def row(name, times):
    p10, median, p90 = np.percentile(times, [10, 50, 90])
    return f"| {name} | {median:.2f} | {p10:.2f} | {p90:.2f} | {times.min():.2f} |"


def over_http(model_path, body, repeats):
    process = subprocess.Popen(
        [sys.executable, "-m", "slidenet", "serve", model_path, "--port", "0"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        url = re.search(r"on (http://\S+?)/? ", process.stdout.readline()).group(1)

        def post():
            request = urllib.request.Request(f"{url}/api/look", data=body, method="POST")
            with urllib.request.urlopen(request) as response:
                json.loads(response.read())

        return timed(post, repeats)
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--no-http", action="store_true", help="skip the live-server timing")
    args = parser.parse_args()

    model = slidenet.load(args.model)
    test = datasets.load(model.meta["data"])
    buffer = io.BytesIO()
    Image.fromarray(test.x_test[0][..., 0] if test.x_test.shape[-1] == 1 else test.x_test[0]).save(
        buffer, format="PNG")
    body = buffer.getvalue()
    explainer = Explainer(model)
    shape = model.input_shape

    results = [("predict (decode + `Model.predict`)",
                timed(lambda: explainer.predict(decode_image(body, shape)), args.repeats)),
               ("look (decode + predict + every layer's output, encoded)",
                timed(lambda: explainer.look(decode_image(body, shape)), args.repeats))]
    if not args.no_http:
        results.append(("look over HTTP (POST /api/look, live server)",
                        over_http(args.model, body, args.repeats)))
    print(f"model: {model.net.pattern}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, NumPy {np.__version__}")
    print(f"{args.repeats} runs each after {WARMUP} warm-up runs, one {'x'.join(map(str, shape))} "
          "image, milliseconds\n")
    print("| work | median | p10 | p90 | fastest |")
    print("|---|---:|---:|---:|---:|")
    for name, times in results:
        print(row(name, times))


if __name__ == "__main__":
    main()
