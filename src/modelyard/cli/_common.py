"""What every client-side command shares: the SDK client, error display, tables and JSON.

Commands talk to the server only through :class:`modelyard.client.Client`. A
:class:`~modelyard.errors.ModelYardError` is shown as ``Error: <message>`` plus a hint of what
to do next on stderr, and the process exits with the error class's ``exit_code`` (2 bad input,
3 authentication or permission, 4 not found, 5 conflict, 6 rate limited, 7 server unavailable):
never a traceback.
"""

from __future__ import annotations

import functools
import itertools
import json
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from rich.console import Console, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from modelyard.errors import (
    ModelNotFound,
    ModelYardError,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    RateLimited,
    Unauthenticated,
    Unavailable,
    ValidationFailed,
    VersionNotFound,
)

if TYPE_CHECKING:
    from modelyard.client import Client

__all__ = [
    "client",
    "handles_errors",
    "show_error",
    "hint_for",
    "out",
    "err",
    "print_json",
    "print_table",
    "watch",
    "human_bytes",
    "escape",
]

F = TypeVar("F", bound=Callable[..., Any])


def out() -> Console:
    """A console on the current stdout (looked up at call time, so test runners capture it)."""
    return Console(file=sys.stdout, soft_wrap=False)


def err() -> Console:
    """A console on the current stderr, for errors and progress bars."""
    return Console(file=sys.stderr)


def client() -> Client:
    """The SDK client for ``$MODELYARD_URL`` / ``$MODELYARD_API_KEY`` (imported lazily: the SDK
    pulls in numpy, which ``modelyard --help`` does not need)."""
    from modelyard.client import Client

    return Client()


def hint_for(exc: ModelYardError) -> str | None:
    """What to do next after ``exc``, or ``None`` when the message says it all."""
    if isinstance(exc, Unavailable) and exc.details.get("reason") == "connect":
        return (
            "is the server running? Start one with `modelyard serve`, or set MODELYARD_URL to "
            "its address."
        )
    if isinstance(exc, Unavailable) and exc.details.get("reason") == "protocol":
        return "is MODELYARD_URL the address of a ModelYard server?"
    if isinstance(exc, Unauthenticated):
        return (
            "set MODELYARD_API_KEY to a valid API key (the server prints an admin key on its "
            "first start)."
        )
    if isinstance(exc, PermissionDenied):
        return "this API key's role may not do that; use a key with a role that may."
    if isinstance(exc, ModelNotFound):
        return "see the models you can use with `modelyard models list`."
    if isinstance(exc, VersionNotFound):
        return "see a model's versions with `modelyard models versions NAME`."
    if isinstance(exc, NotFound):
        return None
    if isinstance(exc, PayloadTooLarge):
        return "the server's limit is set by MODELYARD_MAX_UPLOAD_BYTES / MODELYARD_MAX_REQUEST_BYTES."
    if isinstance(exc, RateLimited) and exc.retry_after is not None:
        return f"retry in {exc.retry_after:g} s."
    if isinstance(exc, Unavailable) and exc.retry_after is not None:
        return f"the server is busy or not ready; retry in {exc.retry_after:g} s."
    if isinstance(exc, ValidationFailed) and exc.details.get("field"):
        return f"check the value of {exc.details['field']!r}."
    return None


def show_error(exc: ModelYardError) -> None:
    """Print ``Error: <message>`` and the hint, if any, to stderr."""
    console = err()
    console.print(f"[bold red]Error:[/bold red] {escape(exc.message)}", highlight=False, soft_wrap=True)
    hint = hint_for(exc)
    if hint:
        console.print(f"[dim]Hint:[/dim] {escape(hint)}", highlight=False, soft_wrap=True)


def handles_errors(fn: F) -> F:
    """Decorate a command: a ``ModelYardError`` becomes a message and its exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ModelYardError as exc:
            show_error(exc)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err().print("Interrupted.")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def exit_unless_succeeded(job: Any) -> None:
    """A job that ended otherwise than ``succeeded``: say why on stderr and exit 1 (failed) or 8
    (cancelled), as every command that waits for a job does."""
    if job.state == "succeeded":
        return
    message = (job.error or {}).get("message", job.state)
    err().print(f"[bold red]Job {job.state}:[/bold red] {escape(str(message))}", highlight=False)
    raise typer.Exit(1 if job.state == "failed" else 8)


def print_json(value: Any) -> None:
    """Machine output: indented JSON on stdout, nothing else."""
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


def make_table(
    columns: Sequence[str], rows: Iterable[Sequence[Any]], *, title: str | None = None,
    wrap_last: bool = False, whole: Sequence[str] = (),
) -> Table:
    """The table :func:`print_table` prints (for a caller that shows it another way, e.g. live)."""
    cells = [["-" if v is None else str(v) for v in row] for row in rows]
    table = Table(title=title, header_style="bold", show_edge=False, pad_edge=False)
    for i, col in enumerate(columns):
        if wrap_last and i == len(columns) - 1:
            table.add_column(col, overflow="fold", min_width=20)
        elif col in whole:
            widest = max([len(col), *(len(line) for row in cells for line in row[i].splitlines())])
            table.add_column(col, no_wrap=True, overflow="ignore", min_width=widest)
        else:
            table.add_column(col, no_wrap=True, overflow="ellipsis")
    for row in cells:
        table.add_row(*(Text(v) for v in row))
    return table


def print_table(
    columns: Sequence[str], rows: Iterable[Sequence[Any]], *, title: str | None = None,
    empty: str = "nothing to show", wrap_last: bool = False, whole: Sequence[str] = (),
) -> None:
    """A rich table on stdout; ``empty`` is printed instead when there are no rows.

    Cells stay on one line (cut with an ellipsis when the terminal is too narrow), so names,
    versions and hashes line up; ``wrap_last`` lets the last column wrap instead (key/value
    tables whose values are long). The columns named in ``whole`` are never cut (ids that the
    next command needs): the others give way first. A cell's own line breaks are kept.
    """
    table = make_table(columns, rows, title=title, wrap_last=wrap_last, whole=whole)
    console = out()
    if table.row_count == 0:
        console.print(empty, highlight=False)
    else:
        console.print(table)


def watch(every_s: float, count: int, frame: Callable[[], tuple[RenderableType, bool]]) -> None:
    """Every ``every_s`` seconds, ``count`` times (0: until Ctrl-C), show what ``frame()``
    returns: in place on a terminal, one after another otherwise (a log, a pipe). ``frame``
    returns what to show and whether to go on: a frame that says stop is the last shown."""
    from rich.live import Live

    console = out()
    live = Live(console=console, auto_refresh=False) if console.is_terminal else None
    try:
        with live or nullcontext():
            for _ in itertools.count() if count == 0 else range(count):
                time.sleep(every_s)
                shown, more = frame()
                if live is not None:
                    live.update(shown, refresh=True)
                else:
                    console.print(shown)
                if not more:
                    return
    except KeyboardInterrupt:
        pass


def json_object(text: str, flag: str, example: str = '{"max_batch_size": 16}') -> dict[str, Any]:
    """An option's value parsed as a JSON object, or a usage error (exit 2) naming ``flag``."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"{flag} must be a JSON object, e.g. {example}: {exc}") from None
    if not isinstance(value, dict):
        raise typer.BadParameter(f"{flag} must be a JSON object, e.g. {example}, got {text!r}")
    return value


def human_bytes(n: int) -> str:
    """``1536`` -> ``1.5 KiB``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
