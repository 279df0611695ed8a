"""`batchrec evaluate`: flags → EvaluateConfig → batchrec.evaluate.run; a table, or JSON with --json."""

from __future__ import annotations

import json
from typing import Annotated

import typer


def evaluate(
    checkpoint: Annotated[
        str | None, typer.Option(help="Checkpoint URL. Default: the workspace's latest for --model.")
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(
            help="Prepared dataset URL. Default: the checkpoint's own data, else the workspace's latest."
        ),
    ] = None,
    model: Annotated[str, typer.Option(help="Model whose latest checkpoint is the default.")] = "sasrec",
    split: Annotated[str, typer.Option(help="test | valid.")] = "test",
    k: Annotated[
        list[int] | None, typer.Option("--k", help="Cutoff, repeatable. Default: --k 10 --k 20.")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Users per scoring batch.")] = 256,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "auto",
    exclude_seen: Annotated[
        str | None,
        typer.Option(
            help="Seen-item policy: history (mask every history item, a repeated target is a miss) "
            "| none. Default: the checkpoint's training policy."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as one JSON object.")] = False,
    workspace: Annotated[
        str | None, typer.Option(envvar="BATCHREC_WORKSPACE", help="Workspace for default locations.")
    ] = None,
) -> None:
    """Full-ranking HR@k, NDCG@k, MRR, Coverage@k of a checkpoint, with the popularity baseline beside it."""
    from batchrec.config import from_dict
    from batchrec.evaluate import EvaluateConfig, format_table, run

    cfg = from_dict(
        EvaluateConfig,
        {
            "checkpoint": checkpoint,
            "data": data,
            "model": model,
            "split": split,
            "ks": k or [10, 20],
            "batch_size": batch_size,
            "device": device,
            "exclude_seen": exclude_seen,
            "workspace": workspace,
        },  # fmt: skip
        where="batchrec evaluate options",
    )
    report = run(cfg)
    typer.echo(json.dumps(report, indent=2) if as_json else format_table(report))
