"""`batchrec score`: flags → ScoreConfig → batchrec.score.run."""

from __future__ import annotations

from typing import Annotated

import typer


def score(
    model: Annotated[str, typer.Option(help="Model name (as trained).")] = "sasrec",
    checkpoint: Annotated[
        str | None, typer.Option(help="Checkpoint URL. Default: the workspace's latest for --model.")
    ] = None,
    data: Annotated[
        str | None, typer.Option(help="Prepared dataset URL. Default: the workspace's latest.")
    ] = None,
    out: Annotated[
        str | None,
        typer.Option(help="Run directory to publish. Default: {workspace}/outputs/{model}/dt={date}."),
    ] = None,
    k: Annotated[int, typer.Option("--k", help="Items per user in the top-k table.")] = 100,
    date: Annotated[str | None, typer.Option(help="Run date YYYY-MM-DD. Default: today (UTC).")] = None,
    batch_size: Annotated[int, typer.Option(help="Users per scoring batch (one Parquet part each).")] = 4096,
    num_workers: Annotated[
        int | None, typer.Option(help="Scorer actors. Default: one per GPU, else one per spare CPU.")
    ] = None,
    gpus_per_worker: Annotated[
        float | None, typer.Option(help="GPUs per scorer actor. Default: 1 if the cluster has GPUs, else 0.")
    ] = None,
    cpus_per_worker: Annotated[float, typer.Option(help="CPUs (and torch threads) per scorer actor.")] = 1.0,
    threads_per_worker: Annotated[
        int | None, typer.Option(help="torch threads per CPU actor. Default: --cpus-per-worker.")
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(
            envvar="RAY_ADDRESS", help="Ray cluster to join (e.g. ray://head:10001). Default: local Ray."
        ),
    ] = None,
    topk_layout: Annotated[
        str, typer.Option(help="lists: one row per user; exploded: one row per (user, rank).")
    ] = "lists",
    retrieval: Annotated[
        str, typer.Option(help="exact (chunked matmul) or faiss (ANN, for huge catalogues).")
    ] = "exact",
    exclude_seen: Annotated[
        str | None,
        typer.Option(
            help="history: never recommend an item of the user's history; none: allow repeats. "
            "Default: the checkpoint's training policy."
        ),
    ] = None,
    stall_timeout_s: Annotated[
        float | None,
        typer.Option(
            help="Stop (exit 75, nothing published) when no batch completes for this long. "
            "Default: 600 s until the first batch, then 10× the slowest batch (≥ 120 s)."
        ),
    ] = None,
    workspace: Annotated[
        str | None, typer.Option(envvar="BATCHREC_WORKSPACE", help="Workspace for default locations.")
    ] = None,
) -> None:
    """Score every user with Ray Data: user/item embeddings and top-k Parquet, published atomically."""
    from batchrec.config import from_dict
    from batchrec.score import ScoreConfig, run

    cfg = from_dict(
        ScoreConfig,
        {
            "model": model,
            "checkpoint": checkpoint,
            "data": data,
            "out": out,
            "k": k,
            "date": date,
            "batch_size": batch_size,
            "num_workers": num_workers,
            "gpus_per_worker": gpus_per_worker,
            "cpus_per_worker": cpus_per_worker,
            "threads_per_worker": threads_per_worker,
            "ray_address": ray_address,
            "topk_layout": topk_layout,
            "retrieval": retrieval,
            "exclude_seen": exclude_seen,
            "stall_timeout_s": stall_timeout_s,
            "workspace": workspace,
        },
        where="batchrec score flags",
    )
    typer.echo(run(cfg))
