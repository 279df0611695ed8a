"""`batchrec rayjob`: RayJobConfig's fields are its flags → batchrec.kube.run; its exit codes."""

from __future__ import annotations

import typer

from batchrec import flags, kube
from batchrec.kube import RayJobConfig


def _run(cfg: RayJobConfig) -> str:
    try:
        return kube.run(cfg)
    except kube.RayJobFailed as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(e.code) from e


rayjob = flags.command(
    RayJobConfig,
    _run,
    doc="Create (or resume) the date's KubeRay RayJob running `batchrec run`, and follow it to its end. "
    "Exit codes: 0 succeeded; 2 bad input or manifest, 3 quality gate (do not retry); 75 deadline or "
    "API unreachable, 1 other failures (retry).",
    envvars={
        "image": "BATCHREC_IMAGE",
        "cpu_image": "BATCHREC_CPU_IMAGE",
        "owner_job": "BATCHREC_OWNER_JOB",
    },
)
