"""Benchmark the prepare stage on the real TinyImageNet-100-A zip.

Prints wall seconds and peak RSS (this process and its decoding workers) for preparing all
60,000 images, then the seconds to load the cache and to touch every training pixel.

    python benchmarks/prepare.py [--zip ../shared/data/tiny-imagenet-100-A.zip] [--workers 2]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline import data  # noqa: E402


class TreeMemory:
    """Samples the summed PSS (proportional set size) of this process and its workers.

    ru_maxrss counts every shared page (torch's libraries, the cache file pages) once per
    process; PSS splits shared pages between their users, so the sum is the real footprint.
    """

    def __init__(self, interval: float = 0.05):
        import psutil

        self.root, self.interval, self.peak = psutil.Process(), interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            total = 0
            for proc in [self.root, *self.root.children(recursive=True)]:
                try:
                    total += proc.memory_full_info().pss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def peak_rss_mb() -> tuple[float, float]:
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return self_kb / 1024, children_kb / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zip", default=str(REPO.parent / "shared" / "data" / "tiny-imagenet-100-A.zip"))
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    zip_path = Path(args.zip)
    if not zip_path.is_file():
        sys.exit(f"no zip at {zip_path}; pass --zip")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "prepared"
        with TreeMemory() as memory:
            start = time.perf_counter()
            stats = data.prepare(zip_path, out, workers=args.workers, progress=False)
            prepare_s = time.perf_counter() - start
        rss_self, rss_child = peak_rss_mb()

        start = time.perf_counter()
        cache = data.load_prepared(out)
        splits = [cache.split(s) for s in data.SPLITS]
        mean = cache.mean_image
        load_s = time.perf_counter() - start
        start = time.perf_counter()
        in_ram = [s.images.clone() for s in splits]  # every pixel read into private memory
        touch_s = time.perf_counter() - start
        nbytes = sum(t.numel() for t in in_ram)

    images = stats["num_train"] + stats["num_val"] + stats["num_test"]
    print(f"zip            {zip_path} (sha256 {stats['zip_sha256'][:16]}...)")
    print(f"images         {images} ({stats['num_train']} train / {stats['num_val']} val / {stats['num_test']} test), "
          f"{stats['num_converted_grayscale']} grayscale converted")
    print(f"prepare        {prepare_s:.2f} s wall ({images / prepare_s:,.0f} images/s, {args.workers} workers)")
    print(f"peak memory    {memory.peak / 2**20:.0f} MB PSS, main process + workers together "
          f"(ru_maxrss: {rss_self:.0f} MB main, {rss_child:.0f} MB largest worker, shared pages counted in each)")
    print(f"load cache     {load_s * 1000:.1f} ms (memory-mapped: meta, 3 splits, labels, mean image {tuple(mean.shape)})")
    print(f"load into RAM  {touch_s:.2f} s to copy all {nbytes / 2**20:.0f} MB of images into memory (page cache warm)")


if __name__ == "__main__":
    main()
