"""`batchrec recommend`: RecommendConfig's fields are its flags → batchrec.recommend.run; a table or JSON."""

from __future__ import annotations

import json

import typer

from batchrec import flags
from batchrec import recommend as stage
from batchrec.recommend import RecommendConfig


def _run(cfg: RecommendConfig, as_json: bool) -> None:
    result = stage.run(cfg)
    typer.echo(json.dumps(result, indent=2, default=str) if as_json else stage.format_table(result))


recommend = flags.command(
    RecommendConfig,
    _run,
    doc="One user's recent history and top-k (from a published run, or a checkpoint and a history), with titles.",
    extras={"as_json": (flags.AS_JSON, False)},
)
