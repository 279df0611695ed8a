"""`python -m batchrec …` — what `torchrun -m batchrec train …` runs; the same program as `batchrec`."""

from cli import app

app(prog_name="batchrec")
