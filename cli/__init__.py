"""The ``ebr`` command line (``cli.main``): one typer app over the same functions the Flyte
tasks, the Serve app and the tests call."""
