"""`batchrec train` (not built yet)."""

import typer


def train() -> None:
    """Not built yet."""
    typer.echo("batchrec train: not built yet", err=True)
    raise typer.Exit(2)
