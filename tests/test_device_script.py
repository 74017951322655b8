"""benchmarks/device.sh, the GPU and many-core benchmark: it parses, documents its options, refuses bad
arguments before doing any work, and (opt-in: DEVICE_SMOKE=1) runs end to end on CPU in its smoke mode."""

import os
import subprocess

import pytest
from conftest import REPO

SCRIPT = REPO / "benchmarks" / "device.sh"


def device_sh(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_script_parses():
    result = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_help_lists_every_option():
    result = device_sh("--help")
    assert result.returncode == 0, result.stderr
    for option in ("--zip", "--workers", "--deadline", "--out", "--smoke", "--pack"):
        assert option in result.stdout
    assert "set -euo" not in result.stdout  # the header only


@pytest.mark.parametrize("args, env, message", [
    (["--workers", "1"], {}, "--workers must be a whole number >= 2, got '1'"),
    (["--workers", "four"], {}, "--workers must be a whole number >= 2, got 'four'"),
    ([], {"WORKERS": "0"}, "--workers must be a whole number >= 2, got '0'"),
    (["--deadline", "5"], {}, "--deadline must be a whole number of seconds >= 60, got '5'"),
    (["--gpus"], {}, "unknown argument '--gpus' (see --help)"),
    (["--zip"], {}, "--zip needs a value"),
    (["--workers", ""], {}, "--workers needs a value"),
    (["--zip", "/nonexistent/tiny.zip"], {}, "--zip /nonexistent/tiny.zip: no such file or folder"),
    (["--smoke", "--zip", "/tmp"], {}, "--smoke makes its own synthetic dataset; drop --zip"),
    (["--smoke", "--pack"], {}, "--pack and --smoke exclude each other"),
    ([], {"SMOKE": "yes"}, "SMOKE must be 0 or 1, got 'yes'"),
])
def test_bad_arguments_are_refused_before_any_work(args, env, message):
    result = device_sh(*args, env=env, timeout=30)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"device.sh: {message}" in result.stderr
    assert result.stdout == ""  # refused before the first step


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("DEVICE_SMOKE"),
                    reason="the smoke run takes 4-6 minutes on 2 cores (its sweep alone starts ten jobs); "
                           "DEVICE_SMOKE=1 runs it")
def test_smoke_run_prints_every_figure(tmp_path):
    logs = tmp_path / "logs"
    result = device_sh("--smoke", "--out", str(logs), env={"TMPDIR": str(tmp_path)}, timeout=1800)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-3000:]
    summary = result.stdout.split("== summary")[1]
    for row in ("GPU", "CPU cores", "data: download + prepare", "train: val top-1", "train: minutes of training",
                "sweep (small): 2 workers / sequential", "sweep (batched)", "sweep: per-child overhead",
                "gradients (saliency)", "gradients (fooling)", "generation (class_viz)", "generation (inversion)",
                "generation (deepdream)", "attribution (images/s", "benchmarks/attribution.py: seconds"):
        assert row in summary, f"{row!r} missing from the summary:\n{summary}"
    for word in ("FAILED", "TIMEOUT", "SKIPPED"):
        assert word not in summary, summary
    assert (logs / "summary.txt").read_text() in summary
    assert (logs / "train.json").is_file()
    assert not list(tmp_path.glob("device-bench.*"))  # the scratch copy is removed
