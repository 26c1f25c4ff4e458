"""``python -m cli``: the ``ebr`` command line without the console script."""

from cli.main import run

run()
