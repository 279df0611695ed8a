"""Logging and progress: plain or JSON log lines carrying the run id and stage.

`BATCHREC_LOG_FORMAT=json` (or `configure(json_format=True)`) makes every line one JSON object
for log collectors; `BATCHREC_RUN_ID` ties the lines of one nightly run together. Long loops
use `Progress`: a tqdm bar on a terminal, a periodic line with rate and ETA otherwise (a pod's
log does not render bars).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import uuid

_state = {"run_id": os.environ.get("BATCHREC_RUN_ID") or uuid.uuid4().hex[:12], "stage": "-"}


class _Formatter(logging.Formatter):
    def __init__(self, as_json: bool):
        super().__init__()
        self.as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        stage = getattr(record, "stage", None) or _state["stage"]
        if self.as_json:
            return json.dumps(
                {
                    "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
                    "level": record.levelname.lower(),
                    "run_id": _state["run_id"],
                    "stage": stage,
                    "msg": record.getMessage(),
                }
            )
        return f"{time.strftime('%H:%M:%S', time.localtime(record.created))} [{stage}] {record.getMessage()}"


def configure(
    *, json_format: bool | None = None, run_id: str | None = None, level: int = logging.INFO
) -> None:
    if run_id:
        _state["run_id"] = run_id
    if json_format is None:
        json_format = os.environ.get("BATCHREC_LOG_FORMAT", "").lower() == "json"
    root = logging.getLogger("batchrec")
    root.handlers.clear()
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(_Formatter(json_format))
    root.addHandler(h)
    root.setLevel(level)
    root.propagate = False


def set_stage(stage: str) -> None:
    _state["stage"] = stage


def set_run_id(run_id: str) -> None:
    """Tag later lines with `run_id` without touching the handlers `configure` set up."""
    _state["run_id"] = run_id


def run_id() -> str:
    return _state["run_id"]


def get(name: str = "batchrec") -> logging.Logger:
    logger = logging.getLogger(name if name.startswith("batchrec") else f"batchrec.{name}")
    if not logging.getLogger("batchrec").handlers:
        configure()
    return logger


def _fmt_eta(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Count work done; show a bar on a TTY, else log `desc: n/total (rate unit/s, ETA)` every `every` s."""

    def __init__(
        self, total: int | None, desc: str, unit: str = "it", every: float = 10.0, enabled: bool = True
    ):
        self.total, self.desc, self.unit, self.every = total, desc, unit, every
        self.n = 0
        self.start = self.last = time.monotonic()
        self.enabled = enabled
        self.postfix = ""
        self._bar = None
        if enabled and sys.stderr.isatty() and os.environ.get("BATCHREC_LOG_FORMAT", "") != "json":
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=f" {unit}", dynamic_ncols=True, leave=False)
        self._log = get("progress")

    def update(self, n: int = 1, **postfix: object) -> None:
        self.n += n
        if postfix:
            self.postfix = " ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in postfix.items()
            )
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix_str(self.postfix, refresh=False)
            return
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self._log.info(self.line())

    def rate(self) -> float:
        return self.n / max(time.monotonic() - self.start, 1e-9)

    def line(self) -> str:
        rate = self.rate()
        total = f"/{self.total}" if self.total else ""
        eta = f", ETA {_fmt_eta((self.total - self.n) / rate)}" if self.total and rate > 0 else ""
        extra = f" {self.postfix}" if self.postfix else ""
        return f"{self.desc}: {self.n}{total} {self.unit} ({rate:,.1f} {self.unit}/s{eta}){extra}"

    def close(self) -> float:
        if self._bar is not None:
            self._bar.close()
        return time.monotonic() - self.start

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
