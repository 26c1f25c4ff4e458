"""``ebr``: the platform's one command line (installed as a console script; ``python -m cli``
runs the same).

    ebr generate | train | embed          the build's steps (progress on stderr)
    ebr slot build | tune | compact        index slots
    ebr release list | show | provision | promote | rollback | retire
    ebr experiment start | stop | report
    ebr stream start | status | stop | compact | produce
    ebr serve                               Ray Serve over HTTP (the page at /)
    ebr search "data engineer" --member 17  a search from the terminal, as a table
    ebr judgments report                    NDCG@10 per release from the page's judgments
    ebr corpus build | eval | upsert | delete | search | list    knowledge-base corpora (RAG)

``--json`` (anywhere on the line) prints results as JSON. Bad arguments print one line naming
the option and exit 2; work that cannot be done prints ``error: <why>`` and exits 1.
"""

from __future__ import annotations

import sys

import typer

# typer 0.29 vendors click: its usage errors are typer's own classes, not click's.
from typer._click.exceptions import UsageError

from cli import build, corpus, judgments, search, stream
from cli.output import ERR, MODE, operator_errors
from cli.release import experiment_app, release_app

app = typer.Typer(
    name="ebr",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Embedding-based retrieval for job search: build, release, stream, serve, search.",
)


@app.callback()
def root(
    json_output: bool = typer.Option(
        False, "--json", help="print results as JSON (machine-readable)"
    ),
) -> None:
    """Embedding-based retrieval for job search: build, release, stream, serve, search."""


for command in (build.generate, build.train, build.embed):
    app.command()(operator_errors(command))
app.command()(operator_errors(search.search))
app.add_typer(build.slot_app, name="slot")
app.add_typer(release_app, name="release")
app.add_typer(experiment_app, name="experiment")
app.add_typer(stream.stream_app, name="stream")
app.add_typer(judgments.judgments_app, name="judgments")
app.add_typer(corpus.corpus_app, name="corpus")


@app.command(context_settings={"allow_extra_args": False})
def serve(
    workspace: str = typer.Option(..., help="workspace root holding models/, slots/, ..."),
    host: str = typer.Option("127.0.0.1", help="HTTP bind address (loopback by default)"),
    port: int = typer.Option(8000, min=1, max=65535, help="HTTP port"),
    num_cpus: int = typer.Option(2, min=1, help="CPUs Ray may schedule on"),
    app_args: str = typer.Option("{}", help="more AppArgs fields as JSON"),
) -> None:
    """Serve the live release and its experiment arms over HTTP (Ray Serve) until SIGTERM;
    the relevance page is at /."""
    from serving.app import main as serve_main

    # Every option named: a typer function called directly gets no defaults resolved.
    serve_main(workspace=workspace, host=host, port=port, num_cpus=num_cpus, front="haproxy",
               throughput_optimized=True, app_args=app_args, ray_address="")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Run one command; -> its exit code (0 done, 1 not done, 2 bad arguments)."""
    args = list(sys.argv[1:] if argv is None else argv)
    head = args[: args.index("--")] if "--" in args else args
    MODE["json"] = "--json" in head
    if MODE["json"]:
        args.remove("--json")
    try:
        code = app(args=args, prog_name="ebr", standalone_mode=False)
    except UsageError as err:  # bad arguments (BadParameter, missing option, no command)
        hint = err.ctx.command_path if err.ctx is not None else "ebr"
        line = f"error: {err.format_message()} (see {hint} --help)"
        ERR.print(line, markup=False, highlight=False, soft_wrap=True)
        return 2
    except typer.Abort:
        ERR.print("aborted")
        return 130
    return code if isinstance(code, int) else 0


def run() -> None:
    """The console script's entry point."""
    sys.exit(main())
