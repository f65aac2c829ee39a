"""Some rows of `slidenet bench --scaling` through `slidenet.bench.scaling.measure`, for a tree
whose command has no `--rows` (to compare a branch with an older tree on PYTHONPATH, ABBA):

    PYTHONPATH=OLD_TREE .venv/bin/python scripts/scaling_rows.py 7 20 batch:1 batch:8
    .venv/bin/python scripts/scaling_rows.py 5 3 size:128 size:224

Arguments: rounds, steps per round, then TABLE:VALUE rows (batch:N for R1 at batch N, size:N
for the VGG-style net at N px, batch 8). Prints `report_scaling`'s tables; no peak memory.
"""
import sys

from slidenet.bench import R1, Settings, scaling


def main():
    rounds, steps = int(sys.argv[1]), int(sys.argv[2])
    out = {"batch": [], "size": [], "threads": []}
    for word in sys.argv[3:]:
        key, value = word.split(":")
        settings = Settings(rounds=rounds, steps=steps, memory=False)
        if key == "batch":
            out["batch"].append({"batch": int(value), **scaling.measure(
                R1, settings, int(value), int(value), False)})
        else:
            out["size"].append({"size": int(value), **scaling.measure(
                scaling.VGG.format(s=int(value)), settings, 8, 8, False)})
    print(scaling.report_scaling(out))


if __name__ == "__main__":
    main()
