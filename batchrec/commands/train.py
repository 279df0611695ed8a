"""`batchrec train`: TrainConfig's fields are its flags → batchrec.train.run."""

from __future__ import annotations

from batchrec import flags, tracking
from batchrec import train as stage
from batchrec.train import TrainConfig

train = flags.command(
    TrainConfig,
    lambda cfg: tracking.train(stage.run(cfg)),
    doc="Train a model; prints the checkpoint URL.",
    hidden=("fault",),
)
