"""`batchrec evaluate` (not built yet)."""

import typer


def evaluate() -> None:
    """Not built yet."""
    typer.echo("batchrec evaluate: not built yet", err=True)
    raise typer.Exit(2)
