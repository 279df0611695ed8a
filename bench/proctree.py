"""The process tree under a benchmark, read from /proc (Linux): who is whose child."""

from __future__ import annotations

import os


def children() -> dict[int, list[int]]:
    """Every live process's children, by parent pid."""
    out: dict[int, list[int]] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            out.setdefault(ppid, []).append(int(pid))
        except (OSError, IndexError, ValueError):
            continue
    return out


def tree(root: int) -> list[int]:
    """`root` and every descendant."""
    kids, stack, out = children(), [root], []
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack.extend(kids.get(pid, []))
    return out
