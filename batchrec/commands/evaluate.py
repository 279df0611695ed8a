"""`batchrec evaluate`: EvaluateConfig's fields are its flags → batchrec.evaluate.run; a table, or JSON."""

from __future__ import annotations

import json

import typer

from batchrec import evaluate as stage
from batchrec import flags, tracking
from batchrec.evaluate import EvaluateConfig


def _run(cfg: EvaluateConfig, as_json: bool) -> None:
    report = tracking.evaluate(stage.run(cfg))
    typer.echo(json.dumps(report, indent=2) if as_json else stage.format_table(report))


evaluate = flags.command(
    EvaluateConfig,
    _run,
    doc="Full-ranking HR@k, NDCG@k, MRR, Coverage@k of a checkpoint, with the popularity baseline beside it.",
    extras={"as_json": (flags.AS_JSON, False)},
)
