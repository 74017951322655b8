"""Which processes are alive, read from /proc: for tests that a job leaves no process behind."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator


def live_processes() -> Iterator[tuple[int, int, str]]:
    """(pid, parent pid, command line) of every process that is not a zombie."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if fields[0] != "Z":
            yield int(proc.name), int(fields[1]), cmdline


def live_children(pid: int) -> list[int]:
    return [p for p, parent, _ in live_processes() if parent == pid]


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains ``text`` (e.g. a test's tmp folder)."""
    return [p for p, _, cmdline in live_processes() if text in cmdline]
