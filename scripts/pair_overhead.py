"""What a paired layer costs the caller when the helper never takes its share (asleep, or
descheduled on a busy machine): each step of R1's prepared net, posted to a control array no
helper serves (the caller takes the task back and runs all of it), against the unpaired path,
one thread's CPU µs per call (median of 5 rounds of 1,000 calls, alternating). A busy machine
can measure it: it needs no second core (docs/benchmarks.md, "Batch 1 on two cores, round 2").

    .venv/bin/python scripts/pair_overhead.py
"""
import statistics, threading, time
import numpy as np
from slidenet.bench import R1
from slidenet.net import Net
from slidenet.ops import runtime
from slidenet.ops.conv import pair
pair.set_enabled(True); pair.wait_ready(60)
plan = Net.from_pattern(R1).prepare()
x = np.random.default_rng(0).standard_normal((1, 32, 32, 3)).astype(np.float32)
ins, out = [], x
for _, run in plan.steps:
    ins.append(out); out = run(out)
fake = np.zeros(pair.SLOTS, np.int64)
fake[pair.GEMM], fake[pair.GEMM_WIDE] = pair._state["kernels"].gemm
real = pair._state["ctl"]
res = {}
for r in range(5):
    for mode in ("posted, taken back", "unpaired"):
        pair._state["ctl"] = fake if mode != "unpaired" else real
        with runtime.workers(2 if mode != "unpaired" else 1):
            for (step, run), given in zip(plan.steps, ins):
                c = time.process_time()
                for _ in range(1000):
                    pair.retry_now(); run(given)
                res.setdefault((step.name, mode), []).append((time.process_time() - c) * 1e3)
pair._state["ctl"] = real
for (name, mode), v in res.items():
    print(f"{name:24s} {mode:20s} {statistics.median(v):6.1f} us ({min(v):.1f}-{max(v):.1f})")
