"""`python -m batchrec …` — what `torchrun -m batchrec train …` runs."""

from cli import app

app()
