"""Benchmark the prepare stage: wall time and peak memory of the whole process tree (the main
process and its decoding workers), on the real TinyImageNet-100-A zip and on zip bombs.

Cases, each in a fresh process so that every peak is its own:

    real                  the real zip, default limits (plus the seconds to load the cache)
    bomb-default          one member of 1 GiB zeros (1 MB compressed) named as a training image,
                          default limits: refused by data.prepare.max_total_bytes before any work
    bomb-total-raised     the same with max_total_bytes=2 GiB: refused by max_image_bytes
    bomb-lying-header     the same, its header claiming 1000 bytes: the read stops there
    bomb-caps-raised      max_total_bytes and max_image_bytes 2 GiB: the member is read, and
                          refused from its first MiB (not an image)
    jpeg-20000x20000      a 2 KB JPEG whose header declares 20000x20000: refused before decoding

Peak memory is reported three ways: the sampled sum of PSS (proportional set size: shared
pages split between their users, the real footprint; the target is <= 1.5 GB), the sampled
sum of RSS (every shared page counted once per process: torch's libraries, pages inherited
through fork), and exact per-process peaks, not summed: ru_maxrss of the main process and the
largest VmHWM of a worker.

    python benchmarks/prepare.py [--zip ../shared/data/tiny-imagenet-100-A.zip] [--workers 2] [--cases real,...]

Needs psutil (pip install -e .[bench]).
"""

from __future__ import annotations

import argparse
import inspect
import io
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GIB = 1 << 30
BOMB_MEMBER = "bomb/train/n00000001/images/n00000001_0.JPEG"
CASES = {  # name -> (zip, limits)
    "real": ("real", {}),
    "bomb-default": ("bomb", {}),
    "bomb-total-raised": ("bomb", {"max_total_bytes": 2 * GIB}),
    "bomb-lying-header": ("lying", {}),
    "bomb-caps-raised": ("bomb", {"max_total_bytes": 2 * GIB, "max_image_bytes": 2 * GIB}),
    "jpeg-20000x20000": ("jpeg-bomb", {}),
}


class TreeMemory:
    """Samples the summed PSS and RSS of this process and its children (the decoding workers), and
    the largest peak RSS (VmHWM, kept by the kernel between samples) of any child."""

    def __init__(self, interval: float = 0.05):
        import psutil

        self.root, self.interval, self.peak_pss, self.peak_rss, self.child_hwm = psutil.Process(), interval, 0, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            pss = rss = 0
            for proc in [self.root, *self.root.children(recursive=True)]:
                try:
                    info = proc.memory_full_info()
                    if proc.pid != self.root.pid:
                        self.child_hwm = max(self.child_hwm, vm_hwm(proc.pid))
                except (psutil.Error, OSError):
                    continue
                pss, rss = pss + info.pss, rss + info.rss
            self.peak_pss, self.peak_rss = max(self.peak_pss, pss), max(self.peak_rss, rss)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def vm_hwm(pid: int) -> int:
    """Peak resident bytes of a live process so far (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def small_jpeg() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (120, 80, 40)).save(buffer, "JPEG")
    return buffer.getvalue()


def write_bomb_zip(path: Path, *, member: bytes | None = None, lie: bool = False) -> Path:
    """A valid one-class TinyImageNet layout whose first training image is ``member``, or 1 GiB of
    zeros (streamed: deflate squeezes it to 1 MB); with ``lie`` its header claims 1000 bytes."""
    jpeg = small_jpeg()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("bomb/wnids.txt", "n00000001\n")
        zf.writestr("bomb/words.txt", "n00000001\tbomb\n")
        if member is None:
            info = zipfile.ZipInfo(BOMB_MEMBER)
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as out:
                block = bytes(1 << 20)
                for _ in range(GIB // len(block)):
                    out.write(block)
        else:
            zf.writestr(BOMB_MEMBER, member)
        zf.writestr("bomb/train/n00000001/images/n00000001_1.JPEG", jpeg)
        zf.writestr("bomb/val/images/val_0.JPEG", jpeg)
        zf.writestr("bomb/val/val_annotations.txt", "val_0.JPEG\tn00000001\t0\t0\t63\t63\n")
        zf.writestr("bomb/test/images/test_0.JPEG", jpeg)
    if lie:
        sys.path.insert(0, str(REPO / "tests"))
        import synthetic

        synthetic.set_declared_size(path, BOMB_MEMBER, 1000)
    return path


def run_case(name: str, zip_path: Path, workers: int) -> dict:
    """One case in this process: prepare, measured; the result as a dict."""
    from pipeline.data import cache as data
    from pipeline.errors import PipelineError

    limits = CASES[name][1]
    accepted = inspect.signature(data.prepare).parameters  # an older prepare() lacks some limits
    ignored = sorted(k for k in limits if k not in accepted)
    limits = {k: v for k, v in limits.items() if k in accepted}
    result: dict = {"case": name, "zip": str(zip_path), "limits": limits, "ignored": ignored}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "prepared"
        with TreeMemory() as memory:
            start = time.perf_counter()
            try:
                stats = data.prepare(zip_path, out, workers=workers, progress=False, **limits)
                result["outcome"] = "prepared {} images".format(stats["num_train"] + stats["num_val"] +
                                                                 stats["num_test"])
            except PipelineError as exc:
                result["outcome"] = f"refused: {exc}"
            result["seconds"] = time.perf_counter() - start
        result["peak_pss_mb"] = memory.peak_pss / 2**20
        result["peak_rss_sum_mb"] = memory.peak_rss / 2**20
        result["maxrss_main_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        result["maxrss_worker_mb"] = memory.child_hwm / 2**20
        if name == "real" and out.is_dir():
            result.update(real_details(data, out, stats, workers, result["seconds"]))
    return result


def real_details(data, out: Path, stats: dict, workers: int, seconds: float) -> dict:
    start = time.perf_counter()
    cache = data.load_prepared(out)
    splits = [cache.split(s) for s in data.SPLITS]
    mean = cache.mean_image
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    in_ram = [s.images.clone() for s in splits]  # every pixel read into private memory
    touch_s = time.perf_counter() - start
    images = stats["num_train"] + stats["num_val"] + stats["num_test"]
    return {"details": [
        f"zip sha256 {stats['zip_sha256'][:16]}...; {images} images ({stats['num_train']} train / "
        f"{stats['num_val']} val / {stats['num_test']} test), {stats['num_converted_grayscale']} grayscale converted",
        f"prepare {images / seconds:,.0f} images/s with {workers} workers",
        f"load cache {load_s * 1000:.1f} ms (memory-mapped: meta, 3 splits, labels, mean image {tuple(mean.shape)})",
        f"load into RAM {touch_s:.2f} s to copy all {sum(t.numel() for t in in_ram) / 2**20:.0f} MB of images "
        "(page cache warm)"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zip", default=str(REPO.parent / "shared" / "data" / "tiny-imagenet-100-A.zip"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--run-case", help=argparse.SUPPRESS)  # internal: one case, JSON on stdout
    parser.add_argument("--case-zip", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_case:
        print(json.dumps(run_case(args.run_case, Path(args.case_zip), args.workers)))
        return

    names = [n.strip() for n in args.cases.split(",") if n.strip()]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        sys.exit(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    real = Path(args.zip)
    if "real" in names and not real.is_file():
        print(f"skipping case real: no zip at {real} (pass --zip)")
        names.remove("real")
    with tempfile.TemporaryDirectory() as tmp:
        zips = {"real": real}
        kinds = {CASES[n][0] for n in names}
        if "bomb" in kinds:
            zips["bomb"] = write_bomb_zip(Path(tmp) / "bomb.zip")
        if "lying" in kinds:
            zips["lying"] = write_bomb_zip(Path(tmp) / "lying.zip", lie=True)
        if "jpeg-bomb" in kinds:
            sys.path.insert(0, str(REPO / "tests"))
            import synthetic

            zips["jpeg-bomb"] = write_bomb_zip(Path(tmp) / "jpeg-bomb.zip", member=synthetic.jpeg_declaring(20000, 20000))
        print(f"{'case':<20} {'seconds':>8} {'peak PSS sum':>13} {'peak RSS sum':>13} {'maxrss main':>12} "
              f"{'maxrss worker':>14}  outcome")
        for name in names:
            zip_path = zips[CASES[name][0]]
            proc = subprocess.run([sys.executable, __file__, "--run-case", name, "--case-zip", str(zip_path),
                                   "--workers", str(args.workers)], capture_output=True, text=True)
            lines = proc.stdout.strip().splitlines()
            if proc.returncode != 0 or not lines:
                print(f"{name:<20} failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
                continue
            r = json.loads(lines[-1])
            outcome = r["outcome"] if len(r["outcome"]) <= 160 else r["outcome"][:159] + "…"
            if r["ignored"]:
                outcome += f" [this prepare() has no {', '.join(r['ignored'])}]"
            worker = f"{r['maxrss_worker_mb']:>11.0f} MB" if r["maxrss_worker_mb"] else f"{'-':>14}"  # none seen
            print(f"{name:<20} {r['seconds']:>8.2f} {r['peak_pss_mb']:>10.0f} MB {r['peak_rss_sum_mb']:>10.0f} MB "
                  f"{r['maxrss_main_mb']:>9.0f} MB {worker}  {outcome}")
            for line in r.get("details", []):
                print(f"{'':<20} {line}")
        print("peak PSS/RSS sum: sampled every 50 ms over the main process and its workers (PSS: the footprint; RSS "
              "counts shared pages once per process); maxrss main: ru_maxrss; maxrss worker: largest VmHWM of a worker")


if __name__ == "__main__":
    main()
