"""`batchrec index …` (not built yet)."""

import typer

app = typer.Typer(no_args_is_help=True)


@app.command()
def build() -> None:
    """Not built yet."""
    typer.echo("batchrec index build: not built yet", err=True)
    raise typer.Exit(2)
