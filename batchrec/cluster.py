"""Ray plumbing for the stages that run on Ray: the session, quiet logs, a stall watchdog, the
check that a run hands back every CPU and GPU it took, and running a step on a GPU node.

A stage joins `RAY_ADDRESS` (a KubeRay or `ray start` cluster) or starts a local Ray, and shuts
down only a Ray it started. Ray Data waits forever for resources that never come (a pool
larger than the free CPUs, a lost node, a worker blocked on I/O); `Watchdog` turns such a wait
into a `RetryableError`, and `wait_released` makes sure a failed run leaves nothing reserved in
a cluster that outlives it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from ray.data._internal.execution.execution_callback import ExecutionCallback

from batchrec import log
from batchrec.errors import RetryableError

_log = log.get("cluster")
T = TypeVar("T")
# Warnings Ray prints on every start that ask nothing of the user: that a local Ray turned token
# authentication on by itself, and that Ray Data's bars are off (batchrec draws its own).
_CHATTY = ("ray._private.authentication.authentication_token_setup", "ray.data._internal.progress")


@contextlib.contextmanager
def session(address: str | None) -> Iterator[bool]:
    """Join `address` (or RAY_ADDRESS), else start a local Ray; yields whether we started it.

    Ray's own start-up banners and warnings go to its log files (and to the console at DEBUG),
    so the job's log stays the job's lines."""
    import ray

    verbose = logging.getLogger("batchrec").isEnabledFor(logging.DEBUG)
    level = logging.INFO if verbose else logging.WARNING
    if ray.is_initialized():
        _quiet(level)
        yield False
        return
    _quiet(level)
    ray.init(address=address, include_dashboard=False, log_to_driver=verbose, logging_level=level)
    _quiet(level)  # ray.init configures its loggers anew
    try:
        yield True
    finally:
        ray.shutdown()


def on_a_gpu(fn: Callable[..., T], *args, address: str | None = None, timeout_s: float = 4 * 3600) -> T:
    """`fn(*args)` in a Ray task holding one GPU when the cluster has GPUs; here otherwise.

    A job's driver (a RayJob's) runs on the CPU head; this is how its own GPU work, evaluation,
    goes where the GPUs are. The caller's error reaches the caller as itself."""
    import ray

    with session(address):
        if not ray.cluster_resources().get("GPU"):
            return fn(*args)
        _log.info("running %s on a GPU worker of the cluster", getattr(fn, "__name__", "the step"))
        try:
            return ray.get(ray.remote(num_gpus=1, max_retries=0)(fn).remote(*args), timeout=timeout_s)
        except ray.exceptions.RayTaskError as e:
            raise e.cause from None


def _quiet(level: int) -> None:
    for name in ("ray", "ray.data", "ray.train"):
        logging.getLogger(name).setLevel(level)
    for name in _CHATTY:
        logging.getLogger(name).setLevel(logging.DEBUG if level <= logging.INFO else logging.ERROR)


class Watchdog:
    """Stops a Ray Data run in which no batch completes for too long.

    The limit is `stall_timeout_s` when given; otherwise 600 s until the first batch (actor
    start-up, model loading), then 10× the slowest batch so far and at least 120 s. The run's
    streaming executor is captured through Ray Data's execution-callback hook
    (`CaptureExecutor`), so a stall shuts it down with force: that kills the actors even when
    one is blocked inside a batch, which merely dropping their handles would not.
    """

    STARTUP_S, MIN_S, FACTOR = 600.0, 120.0, 10.0
    current: Watchdog | None = None  # the run in progress in this driver process

    def __init__(self, stall_timeout_s: float | None):
        self.fixed = stall_timeout_s
        self.last = time.monotonic()
        self.batches, self.slowest = 0, 0.0
        self.executor = None
        self.stalled: str | None = None

    @contextlib.contextmanager
    def watching(self) -> Iterator[Watchdog]:
        """Register as the process's current run and hook into Ray Data's executor creation."""
        import ray

        ctx = ray.data.DataContext.get_current()
        saved = list(ctx.custom_execution_callback_classes)
        ctx.custom_execution_callback_classes = [*saved, CaptureExecutor]
        Watchdog.current = self
        try:
            yield self
        finally:
            ctx.custom_execution_callback_classes = saved
            Watchdog.current = None

    def limit(self) -> float:
        if self.fixed:
            return self.fixed
        if not self.batches:
            return self.STARTUP_S
        return max(self.MIN_S, self.FACTOR * self.slowest)

    def batch_done(self) -> None:
        now = time.monotonic()
        if self.batches:  # the first gap includes actor start-up and model loading
            self.slowest = max(self.slowest, now - self.last)
        self.batches, self.last = self.batches + 1, now

    def check(self) -> bool:
        """True when the run has stalled; the first time, the executor is shut down with force."""
        if self.stalled is not None:
            return True
        waited, limit = time.monotonic() - self.last, self.limit()
        if waited <= limit:
            return False
        self.stalled = (
            f"no batch completed in {waited:.0f} s (stall timeout {limit:.0f} s) after {self.batches} batches"
        )
        self.stop()
        return True

    def drive(self, consume: Callable[[], None], name: str) -> None:
        """Run `consume` (the iteration over a Ray Data run, calling `batch_done`) in a thread
        while this one watches: it returns when the iteration ends, or when the run stalls (the
        run's executor is stopped and `stalled` says why; the caller raises). What `consume`
        raised is raised here, unless the run stalled. A wait inside Ray Data can never keep the
        driver from ending the run."""
        failure: list[BaseException] = []

        def run() -> None:
            try:
                consume()
            except BaseException as e:  # handed to the watching thread, which raises it
                failure.append(e)

        consumer = threading.Thread(target=run, name=name, daemon=True)
        consumer.start()
        while consumer.is_alive():
            consumer.join(timeout=min(1.0, self.limit() / 10))
            if consumer.is_alive() and self.check():
                consumer.join(timeout=30)
                return
        if failure and self.stalled is None:
            raise failure[0]

    def stop(self) -> None:
        """Shut the run's executor down with force (no-op when it has already shut down)."""
        if self.executor is not None:
            self.executor.shutdown(force=True, exception=RetryableError(self.stalled or "run stopped"))


class CaptureExecutor(ExecutionCallback):
    """Hands each new streaming executor of this driver to the current `Watchdog`.

    Ray ships the DataContext, and so this class, to its workers: it keeps no state and is
    importable by name there."""

    def before_execution_starts(self, executor) -> None:
        if Watchdog.current is not None:
            Watchdog.current.executor = executor


def wait_released(before: dict[str, float], timeout_s: float) -> bool:
    """Wait until the cluster's free CPUs and GPUs are back to `before`; warn and say False if not."""
    import ray

    deadline = time.monotonic() + timeout_s
    while True:
        now = ray.available_resources()
        short = {
            r: round(before[r] - now.get(r, 0.0), 3)
            for r in ("CPU", "GPU")
            if now.get(r, 0.0) < before.get(r, 0.0) - 1e-6
        }
        if not short:
            return True
        if time.monotonic() > deadline:
            _log.warning(
                "after %.0f s the cluster still has fewer free resources than before the run: %s",
                timeout_s,
                short,
            )
            return False
        time.sleep(0.2)
