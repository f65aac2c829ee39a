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
             + (" (Winograd F(4, 3) or F(2, 3) where it applies)" if result['settings']['conv'] == "auto" else "")
             + f"; compiled kernels: {result['compiled']} (SLIDENET_NUMBA=0 turns them off)",
             "GFLOPS count a direct convolution's multiply-adds, whatever the algorithm"]
    if "env" in m:
        lines.append("environment: " + ", ".join(f"{k}={v}" for k, v in m["env"].items()))
    load = result.get("other_load_cores")
    if load is not None:
        warn = "  <- the machine was busy: rerun when it is quiet" if load > 0.1 * result["threads"] else ""
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
        libs = list(net["train"])
        head = f"  {'':<28}" + "".join(f"{lib:>12}" for lib in libs)
        lines += ["", head + ("       ratio" if "ratio" in net else "")]
        for key, label in (("train", f"train images/s (batch {net['batch']})"),
                           ("infer", f"infer images/s (batch {net['infer_batch']})")):
            cells = "".join(f"{net[key][lib]['images_per_s']:12.0f}" for lib in libs)
            ratio = f"{net['ratio'][key]:11.2f}x" if "ratio" in net else ""
            lines.append(f"  {label:<28}{cells}{ratio}")
            cells = "".join(f"{net[key][lib]['gflops']:6.1f} ({net[key][lib]['peak_share']:3.0%})"
                            for lib in libs)
            lines.append(f"  {'  GFLOPS (share of peak)':<28}{cells}")
        if "memory" in net:
            cells = "".join(f"{_mb(net['memory'][lib]):>12}" for lib in libs)
            lines.append(f"  {'peak RSS MB, training':<28}{cells}")
            traced = net["memory"]["slidenet"].get("traced_peak_mb")
            if traced is not None:
                lines.append(f"  {'  slidenet traced peak MB':<28}{traced:12.0f}")
    return "\n".join(lines)


def _g(cell):
    if not cell["gflops"]:
        return f"{'':>8}{'':>6}"
    return f"{cell['gflops']:8.1f}{cell['peak_share']:6.0%}"


def _mb(memory):
    return memory.get("error", "failed")[:12] if "rss_mb" not in memory else f"{memory['rss_mb']:.0f}"
