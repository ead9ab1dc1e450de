"""`kpack local ...`: the local Kaggle's commands (being built: see issue 2)."""
import click


@click.group()
def local() -> None:
    """The local Kaggle: a server speaking Kaggle's API wire format, and a kernel runner."""
