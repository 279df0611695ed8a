"""`batchrec score`: ScoreConfig's fields are its flags → batchrec.score.run."""

from __future__ import annotations

from batchrec import flags, tracking
from batchrec import score as stage
from batchrec.score import ScoreConfig

score = flags.command(
    ScoreConfig,
    lambda cfg: tracking.score(stage.run(cfg)),
    doc="Score every user with Ray Data: user/item embeddings and top-k Parquet, published atomically.",
    hidden=("fault",),
)
