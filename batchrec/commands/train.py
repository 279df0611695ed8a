"""`batchrec train`: TrainConfig's fields are its flags → batchrec.train.run."""

from __future__ import annotations

import typer

from batchrec import flags
from batchrec import train as stage
from batchrec.train import TrainConfig


def _run(cfg: TrainConfig) -> None:
    typer.echo(stage.run(cfg))


train = flags.command(TrainConfig, _run, doc="Train a model; prints the checkpoint URL.")
