"""`batchrec train`: defaults < --config FILE < flags < --set key=value → TrainConfig → batchrec.train.run."""

from __future__ import annotations

from typing import Annotated

import typer


def train(
    model: Annotated[
        str | None, typer.Option(help="sasrec | bert4rec | gru4rec | pop. Default: sasrec.")
    ] = None,
    data: Annotated[
        str | None, typer.Option(help="Prepared dataset URL. Default: the workspace's latest.")
    ] = None,
    out: Annotated[
        str | None, typer.Option(help="Checkpoint URL. Default: {workspace}/checkpoints/{model}/{stamp}.")
    ] = None,
    config: Annotated[str | None, typer.Option(help="YAML file of TrainConfig keys.")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="key=value override, repeatable (e.g. model_config.n_layers=3)."),
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue an interrupted run from {out}/train_state.pt.")
    ] = False,
    loss: Annotated[str | None, typer.Option(help="ce | bce | sampled | inbatch. Default: ce.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Most epochs (early stopping may end sooner).")] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Sequences per step (per process under DDP).")
    ] = None,
    max_len: Annotated[int | None, typer.Option(help="Longest history the model reads.")] = None,
    dim: Annotated[int | None, typer.Option(help="Embedding size.")] = None,
    lr: Annotated[float | None, typer.Option(help="AdamW learning rate.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (runs are deterministic given it).")] = None,
    exclude_seen: Annotated[
        str | None,
        typer.Option(
            help="Seen-item policy for validation, kept for evaluate and score: history (default) | none."
        ),
    ] = None,
    workspace: Annotated[
        str | None, typer.Option(envvar="BATCHREC_WORKSPACE", help="Workspace for default locations.")
    ] = None,
) -> None:
    """Train a model; prints the checkpoint URL."""
    from batchrec.config import from_dict, load_yaml, merge, parse_overrides
    from batchrec.train import TrainConfig, run

    values = load_yaml(config) if config else {}
    flags = {"model": model, "data": data, "out": out, "loss": loss, "epochs": epochs, "batch_size": batch_size,
             "max_len": max_len, "dim": dim, "lr": lr, "seed": seed, "exclude_seen": exclude_seen,
             "workspace": workspace}  # fmt: skip
    values = merge(values, {k: v for k, v in flags.items() if v is not None})
    if resume:
        values["resume"] = True
    values = merge(values, parse_overrides(set_))
    typer.echo(run(from_dict(TrainConfig, values, where="batchrec train options")))
