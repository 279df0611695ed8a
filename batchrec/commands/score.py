"""`batchrec score`: ScoreConfig's fields are its flags → batchrec.score.run."""

from __future__ import annotations

import typer

from batchrec import flags
from batchrec import score as stage
from batchrec.score import ScoreConfig


def _run(cfg: ScoreConfig) -> None:
    typer.echo(stage.run(cfg))


score = flags.command(
    ScoreConfig,
    _run,
    doc="Score every user with Ray Data: user/item embeddings and top-k Parquet, published atomically.",
    envvars={"ray_address": "RAY_ADDRESS"},
    hidden=("fault",),
)
