"""`batchrec score` (not built yet)."""

import typer


def score() -> None:
    """Not built yet."""
    typer.echo("batchrec score: not built yet", err=True)
    raise typer.Exit(2)
