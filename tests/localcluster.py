"""A real multi-node Ray cluster on this machine: `ray start --head` plus `ray start --address`
worker nodes, each with its own raylet and object store, on loopback addresses.

Nodes get their own loopback IPs (127.0.0.2 head, 127.0.0.3… workers) so they are distinct
nodes to Ray and every byte between them stays on this machine. The cluster uses token
authentication, as clusters since Ray 2.5x do: a driver joins with `env()` (RAY_ADDRESS,
RAY_AUTH_MODE=token, RAY_AUTH_TOKEN). Every command is bounded by a timeout. Used by
tests/test_cluster.py and bench/bench_cluster.py.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

START_TIMEOUT_S = 120


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _pids(pattern: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", "--", pattern], capture_output=True, text=True, timeout=10)
    return [int(p) for p in out.stdout.split()]


@dataclass
class LocalCluster:
    cpus_per_node: int = 1
    head_ip: str = "127.0.0.2"
    port: int = 0
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    temp_dir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="brc-", dir="/tmp"))
    workers: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"{self.head_ip}:{self.port}"

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for `ray start` and for a driver that joins this cluster."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update(
            RAY_ADDRESS=self.address,
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN=self.token,
            # Ray refuses multi-node clusters with this off (tests turn it off for local Rays).
            RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="1",
            RAY_USAGE_STATS_ENABLED="0",
        )
        env.update(extra)
        return env

    def _ray_start(self, *args: str) -> None:
        env = self.env()
        env.pop("RAY_ADDRESS")
        res = subprocess.run(
            ["ray", "start", *args, f"--num-cpus={self.cpus_per_node}", "--disable-usage-stats"],
            env=env,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S,
        )
        if res.returncode:
            raise RuntimeError(
                f"ray start {' '.join(args)} failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
            )

    def start(self, n_workers: int = 1) -> LocalCluster:
        self.port = _free_port("127.0.0.1")
        self._ray_start(
            "--head",
            f"--node-ip-address={self.head_ip}",
            f"--port={self.port}",
            "--include-dashboard=false",
            f"--temp-dir={self.temp_dir}",
        )
        for _ in range(n_workers):
            self.add_worker()
        return self

    def add_worker(self) -> str:
        ip = f"127.0.0.{3 + len(self.workers)}"
        self._ray_start(f"--address={self.address}", f"--node-ip-address={ip}")
        self.workers.append(ip)
        return ip

    def raylet_pids(self, ip: str) -> list[int]:
        return _pids(f"raylet/raylet .*--node_ip_address={ip}")

    def kill_node(self, ip: str) -> None:
        """SIGKILL a node's raylet, as when its machine is lost; its workers die with it."""
        pids = self.raylet_pids(ip)
        if not pids:
            raise RuntimeError(f"no raylet for node {ip}")
        for pid in pids:
            os.kill(pid, signal.SIGKILL)

    def alive_nodes(self) -> int:
        """Nodes the cluster's GCS counts as alive, asked by a short-lived driver."""
        code = "import ray; ray.init(); print('alive nodes:', sum(n['Alive'] for n in ray.nodes()))"
        res = subprocess.run(
            [sys.executable, "-c", code], env=self.env(), capture_output=True, text=True, timeout=60
        )
        # Ray prints its own lines to stdout too (e.g. "raylet has lagging heartbeats"): find ours
        (line,) = [x for x in res.stdout.splitlines() if x.startswith("alive nodes: ")] or [None]
        if line is None:
            raise RuntimeError(f"no node count from the cluster: {res.stdout[-500:]} {res.stderr[-1000:]}")
        return int(line.removeprefix("alive nodes: "))

    def wait_alive(self, n: int, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        while self.alive_nodes() != n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster did not reach {n} alive node(s) in {timeout_s:.0f} s")
            time.sleep(2)

    def stop(self) -> None:
        """Kill every process of this cluster (not other Rays on the machine), then its files.

        The worker nodes share the head's session directory, so its path names every daemon."""
        daemons = _pids(self.temp_dir)
        # Agents and workers rename themselves (ray::…); they are found as the daemons' children.
        pids = [*daemons]
        for pid in daemons:
            pids += [int(p) for p in subprocess.run(
                ["pgrep", "-P", str(pid)], capture_output=True, text=True, timeout=10
            ).stdout.split()]  # fmt: skip
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(1)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
