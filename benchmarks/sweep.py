"""Benchmark Hydra sweeps: sequential vs 2 parallel workers, and the cost per child run.

Runs the same 8-configuration class_viz sweep (class_viz.lr over 8 values) with Hydra's basic
launcher (one process, sequential, all cores for torch) and with ``hydra/launcher=parallel``
(joblib, ``--workers`` worker processes, cores / workers torch threads each; default 2), in this run,
on this machine, for two workloads:

- small: one class per configuration (the notebook's way of working: one image, many settings).
  A batch of one image keeps the second core only partly busy (the benchmark measures by how
  much: that speed-up s bounds what two processes can gain, parallel/sequential >= s/2);
- batched: 10 classes per configuration. One job already fills both cores with its batch, so
  parallel processes only add their start-up: expect ~1.0x. Sweep these sequentially.

Then the same sweeps with 0 iterations (what is left is the per-child overhead: process start,
model load, MLflow run with params, images and metrics), and one job on its own. Everything logs
to a temporary MLflow store.

    python benchmarks/sweep.py [--iterations 200] [--batched-classes 10] [--batched-iterations 40]
        [--workers 4] [--override class_viz.device=cpu ...]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LRS = "1,1.5,2,2.5,3,3.5,4,4.5"


EXTRA: list[str] = []  # --override: appended to every job's command line


def job(tmp: Path, *args: str, threads: int | None = None) -> float:
    env = dict(os.environ, **({"PIPELINE_THREADS": str(threads)} if threads else {}))
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "pipeline.class_viz", *args, "progress=false",
                             f"tracking.uri=sqlite:///{tmp}/mlflow.db", f"paths.results={tmp}/results",
                             f"paths.metrics={tmp}/metrics", f"hydra.sweep.dir={tmp}/multirun/{time.time()}",
                             f"hydra.run.dir={tmp}/run/{time.time()}", *EXTRA],
                            cwd=REPO, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        sys.exit(f"benchmark job failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=200,
                        help="small workload: iterations per configuration (200: the job's default)")
    parser.add_argument("--batched-classes", type=int, default=10)
    parser.add_argument("--batched-iterations", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2, help="parallel launcher workers (hydra.launcher.n_jobs)")
    parser.add_argument("--override", action="append", default=[], help="a Hydra override for every job")
    args = parser.parse_args()
    if args.workers < 2:
        parser.error("--workers must be >= 2")
    EXTRA[:] = args.override
    parallel = ["hydra/launcher=parallel", f"hydra.launcher.n_jobs={args.workers}"]
    target = {2: 0.6, 4: 0.4}.get(args.workers)

    def classes(n: int) -> str:
        return f"class_viz.classes=[{','.join(str(i) for i in range(n))}]"

    workloads = [("small", 1, args.iterations), ("batched", args.batched_classes, args.batched_iterations)]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        idle = [classes(1), "class_viz.iterations=0", "class_viz.show_every=0"]
        job(tmp, *idle)  # warm the file cache and create the store
        timings = []
        for name, n, iterations in workloads:
            work = [classes(n), f"class_viz.iterations={iterations}", "class_viz.show_every=0"]
            t_seq = job(tmp, "-m", f"class_viz.lr={LRS}", *work)
            t_par = job(tmp, "-m", *parallel, f"class_viz.lr={LRS}", *work)
            timings.append((name, n, iterations, t_seq, t_par))
        # the bound: one small configuration alone, 1 vs 2 torch threads, start-up subtracted
        small = [classes(1), f"class_viz.iterations={args.iterations}", "class_viz.show_every=0"]
        base = job(tmp, *idle)
        one_thread, two_threads = job(tmp, *small, threads=1) - base, job(tmp, *small, threads=2) - base
        o_seq = job(tmp, "-m", f"class_viz.lr={LRS}", *idle)
        o_par = job(tmp, "-m", *parallel, f"class_viz.lr={LRS}", *idle)
        single = job(tmp, *idle)
    for name, n, iterations, t_seq, t_par in timings:
        print(f"8-configuration class_viz sweep, {name}: {n} class(es) x {iterations} iterations each")
        print(f"  sequential (basic launcher)      {t_seq:6.1f} s")
        print(f"  parallel (joblib, {args.workers} workers)     {t_par:6.1f} s   = {t_par / t_seq:.2f}x sequential"
              + ((f" (target <= {target})" if target else "") if name == "small"
                 else " (one job already fills the cores)"))
        print(f"SWEEP_RATIO {name} {args.workers} {t_par / t_seq:.3f}")  # for benchmarks/device.sh's summary
    speedup = one_thread / two_threads
    print(f"why: one small configuration alone computes in {one_thread:.1f} s on 1 thread, {two_threads:.1f} s on 2 "
          f"({speedup:.2f}x from the second core),\n     so 2 workers x 1 thread can at best take "
          f"{speedup / 2:.2f}x the sequential time, before their start-up")
    print("per-child overhead (the same sweeps with 0 iterations, / 8):")
    print(f"  sequential {o_seq / 8:5.2f} s/child, parallel {o_par / 8:5.2f} s/child (target <= 3); "
          f"one job in its own process: {single:5.2f} s (python start, imports, model, MLflow run)")


if __name__ == "__main__":
    main()
