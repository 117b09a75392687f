"""Top-level client commands: ``modelyard predict``, ``modelyard health``, ``modelyard whoami``,
``modelyard console``.

:func:`register` adds them to the main app (they are verbs of their own, not a sub-app).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from modelyard.cli._common import client, err, handles_errors, out, print_json, print_table
from modelyard.errors import BadRequest, NotFound, Unavailable

if TYPE_CHECKING:
    import numpy as np

__all__ = ["register", "predict", "health", "whoami", "console", "parse_data"]


@handles_errors
def predict(
    name: Annotated[str, typer.Argument(help="Model name.")],
    data: Annotated[
        str,
        typer.Option(
            "--data", "-d",
            help="Inputs as JSON: an array (for a single-input model), an object "
            "{input_name: array}, or an OIP v2 body {\"inputs\": [...]}. `@file.json` reads a "
            "file, `@-` stdin.",
        ),
    ],
    version: Annotated[str | None, typer.Option("--version", "-v", help="A version (default: the production one).")] = None,
    output: Annotated[list[str] | None, typer.Option("--output", "-o", help="Return only this output (repeatable).")] = None,
    deadline: Annotated[
        float | None,
        typer.Option("--deadline", metavar="SECONDS",
                     help="Give up after this long (the server answers 504 and drops the work); shorter "
                     "than the model's timeout_s only."),
    ] = None,
    classes: Annotated[
        int | None,
        typer.Option("--classes", metavar="N", min=1,
                     help='Return each --output as its top N classes per row, "value:index:label" '
                     "(label where the version has labels: see `models update --labels`)."),
    ] = None,
    routing_key: Annotated[
        str | None,
        typer.Option("--routing-key", metavar="KEY",
                     help="A user or session id: a deployment sends every request with the same key to the "
                     "same version (sticky canary)."),
    ] = None,
) -> None:
    """Run a model on JSON inputs and print its outputs as JSON.

    Numbers are cast to the input's declared datatype; outputs are printed as
    `{"output_name": nested list, ...}`.

    Examples:

        modelyard predict digits --data '[[0, 0, 5, 13, 9, 1, 0, 0, ...64 values]]'

        modelyard predict digits --data '{"input": [[...]]}' --output label

        modelyard predict digits --data @batch.json --version 2 | jq .label

        modelyard predict digits --data @batch.json --deadline 0.05

        modelyard predict iris --data '[[5.1, 3.5, 1.4, 0.2]]' --output probabilities --classes 2

        modelyard predict digits-live --data @row.json --routing-key user-42   (a deployment: always the same version for user-42)
    """
    if classes is not None and not output:
        raise typer.BadParameter("--classes ranks the outputs you name: give --output too")
    inputs = parse_data(data)
    with client() as sdk:
        result = sdk.predict(name, inputs, version=version, outputs=output or None, deadline_s=deadline,
                             top_classes=classes, routing_key=routing_key)
    print_json({key: _jsonable(value) for key, value in result.items()})


@handles_errors
def health(json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Check that the server answers and is ready (exit code 7 when it is not). Needs no key.

    Examples:

        modelyard health

        MODELYARD_URL=http://gpu-box:8000 modelyard health --json
    """
    with client() as sdk:
        state = sdk.health()
    if json_out:
        print_json({"url": sdk.url, **state})
    else:
        out().print(
            f"{sdk.url}: live {'yes' if state['live'] else 'no'}, ready {'yes' if state['ready'] else 'no'}",
            highlight=False,
            markup=False,
        )
    if not (state["live"] and state["ready"]):
        raise Unavailable(f"the server at {sdk.url} is not ready yet (still starting or draining)")


@handles_errors
def whoami(json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Show who the API key in MODELYARD_API_KEY is: tenant, role, key id, scopes.

    Examples:

        modelyard whoami

        MODELYARD_API_KEY=my_... modelyard whoami --json
    """
    with client() as sdk:
        info = sdk.whoami()
    if json_out:
        print_json({"url": sdk.url, **info})
        return
    rows: list[tuple[str, Any]] = [("server", sdk.url)]
    for key in ("tenant", "role", "key_id", "scopes", "server_version"):
        if key in info:
            value = info[key]
            if isinstance(value, list):
                value = ", ".join(map(str, value)) or "(all)"
            rows.append((key, value))
    print_table(["FIELD", "VALUE"], rows, wrap_last=True)


@handles_errors
def console(
    open_: Annotated[bool, typer.Option("--open/--no-open", help="Open it in the default browser too.")] = True,
) -> None:
    """Print the address of the server's web console, and open it in a browser. Sign in there with
    your API key: it shows models, deployments and their traffic, usage, jobs with their curves.

    Examples:

        modelyard console

        MODELYARD_URL=http://gpu-box:8000 modelyard console --no-open
    """
    import webbrowser

    with client() as sdk:
        try:
            url = sdk.console_url()
        except NotFound as exc:
            raise NotFound(f"the server at {sdk.url} serves no web console (it runs with MODELYARD_CONSOLE=false)") from exc
    out().print(url, highlight=False, markup=False)
    if open_ and not webbrowser.open(url):
        err().print("No browser to open here: open that address in one.", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``predict``, ``health``, ``whoami`` and ``console`` to the top-level ``app``."""
    app.command("predict")(predict)
    app.command("health")(health)
    app.command("whoami")(whoami)
    app.command("console")(console)


def parse_data(data: str) -> Any:
    """``--data`` text (or ``@file`` / ``@-``) as SDK inputs: an array-like, or a dict of them.

    Raises ``BadRequest`` (exit code 2) for unreadable files and malformed JSON, naming the fix.
    """
    if data.startswith("@"):
        source = data[1:]
        if source == "-":
            text = sys.stdin.read()
        else:
            try:
                text = Path(source).read_text(encoding="utf-8")
            except OSError as exc:
                raise BadRequest(f"cannot read --data file {source!r}: {exc.strerror or exc}") from None
    else:
        text = data
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise BadRequest(
            f"--data is not valid JSON ({exc}); pass e.g. '[[1.0, 2.0]]', "
            "'{\"input\": [[1.0, 2.0]]}' or @file.json"
        ) from None
    if isinstance(doc, dict) and isinstance(doc.get("inputs"), list):
        return _from_oip(doc["inputs"])
    if isinstance(doc, (list, dict)):
        return doc
    raise BadRequest(
        f"--data must be a JSON array or object, got {type(doc).__name__}; pass e.g. '[[1.0, 2.0]]'"
    )


def _from_oip(items: list[Any]) -> dict[str, Any]:
    import numpy as np

    inputs: dict[str, Any] = {}
    for i, item in enumerate(items):
        if not isinstance(item, dict) or "name" not in item or "data" not in item:
            raise BadRequest(f"--data: inputs[{i}] needs 'name' and 'data'")
        value = np.asarray(item["data"])
        if "shape" in item:
            try:
                value = value.reshape([int(d) for d in item["shape"]])
            except (TypeError, ValueError) as exc:
                raise BadRequest(f"--data: inputs[{i}] ({item['name']!r}): {exc}") from None
        inputs[str(item["name"])] = value
    return inputs


def _jsonable(array: np.ndarray) -> Any:
    """Nested lists; BYTES elements as UTF-8 text (undecodable bytes replaced)."""
    if array.dtype.kind != "O":
        return array.tolist()
    import numpy as np

    def text(x: Any) -> Any:
        return x.decode("utf-8", errors="replace") if isinstance(x, bytes) else x

    return np.vectorize(text, otypes=[object])(array).tolist()
