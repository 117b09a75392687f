"""``modelyard``: serve, push, list, predict... Run ``modelyard --help``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from modelyard.cli import datasets as datasets_cli
from modelyard.cli import deploy as deploy_cli
from modelyard.cli import evaluate as evaluate_cli
from modelyard.cli import llm as llm_cli
from modelyard.cli import models as models_cli
from modelyard.cli import monitoring as monitoring_cli
from modelyard.cli import optimize as optimize_cli
from modelyard.cli import predict as predict_cli
from modelyard.cli import tenancy as tenancy_cli
from modelyard.cli import trace as trace_cli
from modelyard.cli import train as train_cli

__all__ = ["app", "main"]

app = typer.Typer(
    name="modelyard",
    help=(
        "ModelYard: serve, train and optimize models as authenticated network APIs.\n\n"
        "Start a server with `modelyard serve`; talk to it with the other commands, which read "
        "MODELYARD_URL (default http://127.0.0.1:8000) and MODELYARD_API_KEY."
    ),
    no_args_is_help=True,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """ModelYard command line."""


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option("--port", "-p", help="HTTP port (default 8000).")] = None,
    grpc_port: Annotated[int | None, typer.Option(help="gRPC port (default 8001).")] = None,
    home: Annotated[Path | None, typer.Option(help="Data folder (default ./modelyard-data).")] = None,
    database_url: Annotated[str | None, typer.Option(help="SQLAlchemy URL (default SQLite in home).")] = None,
    demo: Annotated[bool, typer.Option("--demo/--no-demo", help="Register the digits demo model.")] = False,
) -> None:
    """Start the server (HTTP + gRPC). The first start prints an admin key once.

    Examples:

        modelyard serve --demo

        MODELYARD_HOME=/srv/modelyard modelyard serve --host 0.0.0.0 --port 8080
    """
    from modelyard.config import Settings
    from modelyard.server import run_server

    settings = Settings().with_overrides(
        host=host, http_port=port, grpc_port=grpc_port, home=home, database_url=database_url,
        demo_model=demo or None,
    )
    raise typer.Exit(run_server(settings))


app.add_typer(models_cli.app)
for _tenancy_app in (tenancy_cli.tenants_app, tenancy_cli.keys_app, tenancy_cli.usage_app):
    app.add_typer(_tenancy_app)
app.add_typer(llm_cli.app)
app.add_typer(deploy_cli.app)
predict_cli.register(app)
optimize_cli.register(app)
evaluate_cli.register(app)
app.add_typer(datasets_cli.app)
app.add_typer(trace_cli.app)
app.add_typer(monitoring_cli.app)
train_cli.register(app)


def main() -> None:
    app()
