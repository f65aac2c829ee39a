"""`slidenet bench`'s result as text tables: the machine, each net's steps, the ratios."""


def report(result):
    """The result of `run` as text tables."""
    m = result["machine"]
    lines = [f"machine: {m['cpu']}, {m['cores']} cores; python {m['python']}, numpy {m['numpy']} "
             f"({m['blas']})" + (f", torch {m['torch']}" if "torch" in m else ""),
             f"threads: {result['threads']} per library (slidenet: {result['slidenet_threads']}); "
             f"sgemm {result['sgemm']['n']}^3 float32: {result['sgemm']['gflops']:.1f} GFLOPS "
             "(the peak below)",
             f"slidenet convolutions: {result['settings']['conv']}"
             + (" (Winograd F(4, 3) or F(2, 3) where it applies, direct for thin first layers;"
                " F(4x4, 3x3) for 3x3 layers of 8 or more channels: in training from 8 x 8"
                " outputs, in inference)"
                if result['settings']['conv'] == "auto" else "")
             + f"; compiled kernels: {result['compiled']} (SLIDENET_NUMBA=0 turns them off)",
             "GFLOPS count a direct convolution's multiply-adds, whatever the algorithm"]
    if "env" in m:
        lines.append("environment: " + ", ".join(f"{k}={v}" for k, v in m["env"].items()))
    if "warning" in m:
        lines.append("warning: " + m["warning"])
    busy = result["settings"].get("busy", 0)
    if busy:
        lines.append(f"--busy {busy}: {busy} other process{'es' * (busy > 1)} spinning on a core "
                     "each while the libraries were timed (counted in the load below)")
    load = result.get("other_load_cores")
    if load is not None:
        warn = "  <- the machine was busy: rerun when it is quiet" \
            if load - busy > 0.1 * result["threads"] else ""
        lines.append(f"other processes kept {load:.2f} cores busy during the run{warn}")
    for name, net in result["nets"].items():
        width = max(len(row["layer"]) for row in net["layers"]) + 2
        lines += ["", f"{name}: {net['pattern']}",
                  f"slidenet steps, training at batch {net['batch']} (median of rounds):",
                  f"  {'step':<{width}}{'fwd ms':>9}{'GFLOPS':>8}{'peak':>6}"
                  f"{'bwd ms':>10}{'GFLOPS':>8}{'peak':>6}"]
        for row in net["layers"]:
            f, b = row["forward"], row["backward"]
            lines.append(f"  {row['layer']:<{width}}{f['ms']:9.1f}{_g(f)}{b['ms']:10.1f}{_g(b)}")
        libs = list(net["infer"])           # slidenet, then torch and onnxruntime when installed
        lines += ["", f"  {'':<30}" + "".join(f"{lib:>13}" for lib in libs)]
        for key, label, unit in (("train", f"train images/s (batch {net['batch']})", "rate"),
                                 ("infer", f"infer images/s (batch {net['infer_batch']})", "rate"),
                                 ("latency", "batch 1, ms per image", "ms")):
            cells = "".join(_cell(net[key].get(lib), unit) for lib in libs)
            lines.append(f"  {label:<30}{cells}")
            if unit == "rate":
                cells = "".join(f"{'-':>13}" if lib not in net[key] else
                                f"{net[key][lib]['gflops']:7.1f} ({net[key][lib]['peak_share']:3.0%})"
                                for lib in libs)
                lines.append(f"  {'  GFLOPS (share of peak)':<30}{cells}")
        for other in libs[1:]:
            parts = [f"{what} {net['ratio'][key][other]:.2f}x" for key, what in
                     (("train", "training"), ("infer", "inference"), ("latency", "batch 1"))
                     if other in net["ratio"].get(key, {})]
            lines.append(f"  slidenet / {other}: " + ", ".join(parts)
                         + " (above 1: slidenet is faster; medians of alternating rounds)")
        if "memory" in net:
            cells = "".join(f"{_mb(net['memory'][lib]) if lib in net['memory'] else '-':>13}"
                            for lib in libs)
            lines.append(f"  {'peak RSS MB, training':<30}{cells}")
            traced = net["memory"]["slidenet"].get("traced_peak_mb")
            if traced is not None:
                lines.append(f"  {'  slidenet traced peak MB':<30}{traced:13.0f}")
    return "\n".join(lines)


def _cell(measured, unit):
    """A library's number and its spread over the rounds, or '-' where it was not measured."""
    if measured is None:
        return f"{'-':>13}"
    rate, (slow, fast) = measured["images_per_s"], measured["spread"]
    swing = f"±{50 * (fast - slow) / rate:.0f}%"       # half the range of the rounds
    if unit == "ms":
        return f"{measured['ms']:8.3f} {swing:>4}"
    return f"{rate:8.0f} {swing:>4}"


def _g(cell):
    if not cell["gflops"]:
        return f"{'':>8}{'':>6}"
    return f"{cell['gflops']:8.1f}{cell['peak_share']:6.0%}"


def _mb(memory):
    return memory.get("error", "failed")[:12] if "rss_mb" not in memory else f"{memory['rss_mb']:.0f}"
