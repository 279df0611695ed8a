"""`batchrec data …` (being built)."""

import typer

app = typer.Typer(no_args_is_help=True)


@app.command()
def stats() -> None:
    """Not built yet."""
    raise typer.Exit(2)
