"""Benchmark Hydra sweeps: sequential vs 2 parallel workers, and the cost per child run.

Runs the same 8-configuration class_viz sweep (class_viz.lr over 8 values, a few classes, a few
iterations) with Hydra's basic launcher (one process, sequential) and with
``hydra/launcher=parallel`` (joblib, 2 worker processes, 1 torch thread each), in this run, on
this machine; then the same sweeps with 0 iterations (what is left is the per-child overhead:
process start, model load, MLflow run with params, images and metrics), and one job on its own.
Everything logs to a temporary MLflow store.

    python benchmarks/sweep.py [--classes 10] [--iterations 40]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LRS = "1,1.5,2,2.5,3,3.5,4,4.5"


def job(tmp: Path, *args: str) -> float:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "pipeline.class_viz", *args, "progress=false",
                             f"tracking.uri=sqlite:///{tmp}/mlflow.db", f"paths.results={tmp}/results",
                             f"paths.metrics={tmp}/metrics", f"hydra.sweep.dir={tmp}/multirun/{time.time()}",
                             f"hydra.run.dir={tmp}/run/{time.time()}"],
                            cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"benchmark job failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=40)
    args = parser.parse_args()
    classes = f"class_viz.classes=[{','.join(str(i) for i in range(args.classes))}]"
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        work = [classes, f"class_viz.iterations={args.iterations}", "class_viz.show_every=0"]
        idle = [classes, "class_viz.iterations=0", "class_viz.show_every=0"]
        job(tmp, *idle)  # warm the file cache and create the store
        t_seq = job(tmp, "-m", f"class_viz.lr={LRS}", *work)
        t_par = job(tmp, "-m", "hydra/launcher=parallel", f"class_viz.lr={LRS}", *work)
        o_seq = job(tmp, "-m", f"class_viz.lr={LRS}", *idle)
        o_par = job(tmp, "-m", "hydra/launcher=parallel", f"class_viz.lr={LRS}", *idle)
        single = job(tmp, *idle)
    print(f"8-configuration class_viz sweep ({args.classes} classes x {args.iterations} iterations each):")
    print(f"  sequential (basic launcher)      {t_seq:6.1f} s")
    print(f"  parallel (joblib, 2 workers)     {t_par:6.1f} s   = {t_par / t_seq:.2f}x sequential (target <= 0.6)")
    print("per-child overhead (the same sweeps with 0 iterations, / 8):")
    print(f"  sequential {o_seq / 8:5.2f} s/child, parallel {o_par / 8:5.2f} s/child (target <= 3); "
          f"one job in its own process: {single:5.2f} s (python start, imports, model, MLflow run)")


if __name__ == "__main__":
    main()
