"""`batchrec run` (not built yet)."""

import typer


def run() -> None:
    """Not built yet."""
    typer.echo("batchrec run: not built yet", err=True)
    raise typer.Exit(2)
