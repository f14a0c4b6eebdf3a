"""Merge benchmark at LLaVA-1.5-7B projector shapes (mlp2x_gelu: 1024 -> 4096 -> 4096, fp32, K=4 experts).

    python bench/bench_merge.py [--experts 4] [--repeats 2] [--out bench/results/merge.json]

Each method runs in its own subprocess (fresh interpreter, same seeded inputs), so that its memory
high-water mark is its own. Reported per method:

* time: best of ``--repeats`` wall-clock runs of the merge call (task vectors included; no file I/O);
* ratio to peft: time / time of peft's per-tensor TIES (``peft.utils.merge_utils.ties`` called tensor by
  tensor with unit weights, plus pivot + lam * merged), measured in the same benchmark run;
* peak memory / input: (peak RSS during the merge - RSS before the inputs were created) / bytes of the
  inputs (pivot + K experts). The peak is the kernel's VmHWM, reset with ``/proc/self/clear_refs`` right
  before the merge (falls back to ``ru_maxrss``). torch's CPU allocator returns large blocks to the OS,
  so RSS follows live tensors; tracemalloc would not see torch memory at all. The value therefore includes
  the inputs themselves (1.0) plus the output and every temporary; "extra" is the part above the inputs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHAPES = {"0.weight": (4096, 1024), "0.bias": (4096,), "2.weight": (4096, 4096), "2.bias": (4096,)}

# name -> (label, kind, options)
METHODS = {
    "peft_ties": ("TIES, peft per-tensor (reference)", "peft_ties", {"density": 0.2}),
    "ties_tensor": ("TIES, ours, scope=tensor (= peft)", "ties", {"density": 0.2, "scope": "tensor"}),
    "ties_global": ("TIES, ours, scope=global (paper)", "ties", {"density": 0.2, "scope": "global"}),
    "peft_dare_ties": ("DARE-TIES, peft per-tensor", "peft_dare_ties", {"p": 0.5}),
    "dare_ties": ("DARE-TIES, ours", "dare_ties", {"p": 0.5}),
    "task_arithmetic": ("Task Arithmetic, ours", "task_arithmetic", {}),
    "pivotmerge": ("PivotMerge data-free (defaults)", "pivotmerge", {}),
    "pivotmerge_trim": ("PivotMerge, remainder_density=0.5", "pivotmerge", {"remainder_density": 0.5}),
}


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak(reset_ok: bool) -> int:
    if reset_ok:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def make_inputs(n_experts: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    pivot = {k: torch.randn(s, generator=g) * 0.02 for k, s in SHAPES.items()}
    experts = []
    for _ in range(n_experts):
        e = {}
        for k, v in pivot.items():
            t = torch.randn(v.shape, generator=g)
            t.mul_(0.002).add_(v)
            e[k] = t
        experts.append(e)
    return pivot, experts


def run_peft(kind: str, pivot, experts, opts):
    import torch
    from peft.utils import merge_utils as mu

    w = torch.ones(len(experts))
    out = {}
    for k, v in pivot.items():
        taus = [e[k] - v for e in experts]
        if kind == "peft_ties":
            m = mu.ties(taus, w, opts["density"], "total")
        else:
            m = mu.dare_ties(taus, w, 1 - opts["p"], "total")
        out[k] = v + 1.0 * m
        del taus, m
    return out


def worker(name: str, n_experts: int, repeats: int) -> dict:
    import torch

    from pivotmerge.merging import merge

    label, kind, opts = METHODS[name]
    # warm up torch kernels on small tensors so first-call overheads are not timed
    small_p = {"a.weight": torch.randn(8, 4), "a.bias": torch.randn(8)}
    small_e = [{k: v + 1 for k, v in small_p.items()} for _ in range(2)]
    if kind.startswith("peft"):
        run_peft(kind, small_p, small_e, opts)
    else:
        merge(kind, small_p, small_e, **opts)
    rss0 = _rss()
    pivot, experts = make_inputs(n_experts)
    input_bytes = sum(t.numel() * t.element_size() for sd in [pivot, *experts] for t in sd.values())
    rss1 = _rss()
    times = []
    peak = 0
    for _ in range(repeats):
        reset_ok = _reset_peak()
        t0 = time.perf_counter()
        if kind.startswith("peft"):
            out = run_peft(kind, pivot, experts, opts)
        else:
            out = merge(kind, pivot, experts, **opts)
        times.append(time.perf_counter() - t0)
        peak = max(peak, _peak(reset_ok))
        del out
    return {
        "method": name, "label": label, "kind": kind, "options": opts, "time_s": min(times), "times_s": times,
        "input_bytes": input_bytes, "peak_over_input": (peak - rss0) / input_bytes,
        "extra_over_input": (peak - rss1) / input_bytes, "peak_source": "VmHWM" if _reset_peak() else "ru_maxrss",
        "threads": torch.get_num_threads(),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--experts", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--methods", nargs="*", default=list(METHODS))
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "merge.json"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.experts, args.repeats)))
        return 0
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    rows = []
    for name in args.methods:
        r = subprocess.run([sys.executable, __file__, "--worker", name, "--experts", str(args.experts),
                            "--repeats", str(args.repeats)], capture_output=True, text=True, env=env, cwd=REPO)
        if r.returncode != 0:
            print(f"{name}: failed\n{r.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
        print(f"  ran {name}: {rows[-1]['time_s']:.2f}s", file=sys.stderr)
    ref = next((r["time_s"] for r in rows if r["method"] == "peft_ties"), None)
    for r in rows:
        r["ratio_to_peft_ties"] = r["time_s"] / ref if ref else None
    in_mb = rows[0]["input_bytes"] / 2**20 if rows else 0
    print(f"\nMerge benchmark: LLaVA-1.5-7B projector (0.weight 4096x1024, 2.weight 4096x4096, biases), "
          f"K={args.experts}, fp32, inputs {in_mb:.0f} MiB, {os.cpu_count()} CPUs, torch threads "
          f"{rows[0]['threads'] if rows else '?'}, load average {os.getloadavg()[0]:.1f} (other jobs share the CPUs)")
    print(f"{'method':<38} {'time (s)':>9} {'/ peft TIES':>12} {'peak mem / input':>17} {'extra / input':>14}")
    for r in rows:
        ratio = f"{r['ratio_to_peft_ties']:.2f}x" if r["ratio_to_peft_ties"] is not None else "-"
        print(f"{r['label']:<38} {r['time_s']:>9.2f} {ratio:>12} {r['peak_over_input']:>16.2f}x "
              f"{r['extra_over_input']:>13.2f}x")
    checks = {}
    by = {r["method"]: r for r in rows}
    if "ties_tensor" in by and ref:
        checks["ties_tensor_le_half_peft"] = by["ties_tensor"]["ratio_to_peft_ties"] <= 0.5
    if "ties_global" in by and ref:
        checks["ties_global_le_half_peft"] = by["ties_global"]["ratio_to_peft_ties"] <= 0.5
    if "pivotmerge" in by:
        checks["pivotmerge_under_5s"] = by["pivotmerge"]["time_s"] < 5.0
    ours = [r for r in rows if not r["kind"].startswith("peft")]
    checks["peak_memory_under_3x_input"] = all(r["peak_over_input"] < 3.0 for r in ours)
    print("targets: " + ", ".join(f"{k}={'OK' if v else 'MISSED'}" for k, v in checks.items()))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"shapes": {k: list(v) for k, v in SHAPES.items()}, "experts": args.experts, "dtype": "float32",
               "repeats": args.repeats, "cpus": os.cpu_count(), "platform": platform.platform(),
               "python": platform.python_version(), "loadavg_1min_at_end": os.getloadavg()[0], "results": rows, "targets": checks,
               "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, out)
    print(f"results -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
