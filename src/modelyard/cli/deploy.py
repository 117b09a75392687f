"""``modelyard deploy``: create and change deployments (canary weights, shadow, rollback,
progressive rollout), and watch one live."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.console import Group
from rich.text import Text

from modelyard.cli._common import client, handles_errors, json_object, make_table, out, print_json, print_table, watch

__all__ = ["app"]

app = typer.Typer(
    name="deploy",
    help=(
        "Serve models under a deployment name with canary weights, a shadow and serving settings.\n\n"
        "Routes are `MODEL:VERSION[=WEIGHT]`; the first is the primary. A deployment `web` is "
        "called like a model: `/v2/models/web/infer`."
    ),
    no_args_is_help=True,
    rich_markup_mode="markdown",
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _route(text: str) -> dict[str, Any]:
    target, _, weight = text.partition("=")
    model, sep, version = target.rpartition(":")
    if not sep or not model or not version.isdigit():
        raise typer.BadParameter(f"expected MODEL:VERSION[=WEIGHT], got {text!r}")
    try:
        w = float(weight) if weight else 100.0
    except ValueError:
        raise typer.BadParameter(f"weight must be a number in {text!r}") from None
    return {"model": model, "version": int(version), "weight": w}


def _shadow(text: str | None) -> dict[str, Any] | None:
    """``MODEL:VERSION[=SHARE]`` as a shadow (all requests mirrored without a share)."""
    if not text:
        return None
    s = _route(text)
    return {"model": s["model"], "version": s["version"], "share": s["weight"] if "=" in text else 1.0}


def _serving(text: str | None) -> dict[str, Any] | None:
    return json_object(text, "--serving") if text else None


def _rollout(steps: str | None, every_s: float, canary_requests: int = 0) -> dict[str, Any] | None:
    """``10,25,50,100`` every ``every_s`` seconds (each step also waiting for ``canary_requests``
    canary answers) as a rollout (the server checks the rest)."""
    if not steps:
        if canary_requests:
            raise typer.BadParameter("--canary-requests goes with --rollout (the steps it gates)")
        return None
    try:
        shares = [float(step) for step in steps.split(",")]
    except ValueError:
        raise typer.BadParameter(
            f"--rollout takes the canary's percents, rising, e.g. 10,25,50,100; not {steps!r}"
        ) from None
    return {"steps": shares, "interval_s": every_s, "min_requests": canary_requests}


def _rollback(current: Callable[[], dict[str, Any] | None], **given: float | None) -> dict[str, Any] | None:
    """The automatic-rollback policy the options give (``max_error_rate``, ``max_p99_ms``,
    ``max_p99_ratio``, ``window_s``; ``None``: none given), over the deployment's policy now
    (``current()``, asked only then): what is not given stays (the server checks the ranges)."""
    if all(value is None for value in given.values()):
        return None
    now = current()
    if now is None and all(value is None for key, value in given.items() if key != "window_s"):
        raise typer.BadParameter("--window-s goes with --max-error-rate, --max-p99-ms or --max-p99-ratio (the limits "
                                 "it is the window of)")
    return {**(now or {}), **{key: value for key, value in given.items() if value is not None}}


MaxErrorRateOption = Annotated[float | None, typer.Option(
    help="Roll canaries back when their error rate over the window is above this (0-1).",
)]
MaxP99Option = Annotated[float | None, typer.Option(
    "--max-p99-ms", metavar="MS",
    help="Roll canaries back when the 99th percentile of their latency over the window is above MS.",
)]
MaxP99RatioOption = Annotated[float | None, typer.Option(
    "--max-p99-ratio", metavar="X",
    help="Roll canaries back when their p99 latency over the window is above X times the primary's (1 or more).",
)]
WindowOption = Annotated[float | None, typer.Option(
    help="Seconds of traffic the rollback limits look at (60 unless given).",
)]


RolloutOption = Annotated[str | None, typer.Option(
    "--rollout", metavar="PERCENTS",
    help="Raise the canary's share step by step, e.g. 10,25,50,100 (100 promotes it); two routes.",
)]
EveryOption = Annotated[float, typer.Option("--every", metavar="SECONDS", help="Seconds between two rollout steps.")]
CanaryRequestsOption = Annotated[int, typer.Option(
    "--canary-requests", metavar="N", min=0,
    help="A step also waits until the canary answered N requests without error at the one before it.",
)]


def _show(dep: Any, json_out: bool) -> None:
    if json_out:
        print_json(dep.to_dict())
        return
    stats = _route_stats(dep)
    rows = []
    for r in dep.routes:
        label = _label(r)
        s = stats.get(label, {})
        rows.append([label, f"{r['weight']:g}", s.get("requests", 0), s.get("errors", 0)])
    for r in (dep.stats or {}).get("retired") or []:  # a canary rolled back, a version replaced
        rows.append([f"{_label(r)} (retired)", "-", r.get("requests", 0), r.get("errors", 0)])
    if dep.shadow:
        sh = (dep.stats or {}).get("shadow") or {}
        rows.append([f"{dep.shadow['model']}:{dep.shadow['version']} (shadow)", f"{dep.shadow['share']:g}",
                     sh.get("requests", 0), f"agreement {sh.get('agreement_rate')}"])
    title = f"{dep.name} (revision {dep.revision}; {_counted_by(dep)})"
    print_table(["route", "weight", "requests", "errors"], rows, title=title)
    if dep.rollback:
        typer.echo(_policy(dep.rollback))
    rollout = dep.rollout
    if rollout:
        print_table(["rollout", "every", "next"], [[_steps(rollout), f"{rollout['interval_s']:g} s", _next(dep)]])


def _label(route: dict[str, Any]) -> str:
    return f"{route['model']}:{route['version']}"


def _route_stats(dep: Any) -> dict[str, dict[str, Any]]:
    """The live statistics of each route, of every server of the cluster (by label; none before
    its first request)."""
    return {_label(r): r for r in (dep.stats or {}).get("routes", [])}


def _policy(rollback: dict[str, Any]) -> str:
    """A rollback policy in words."""
    limits = [f"its error rate passes {rollback['max_error_rate']:g}"]
    latency = []
    if rollback.get("max_p99_ms") is not None:
        latency.append(f"{rollback['max_p99_ms']:g} ms")
    if rollback.get("max_p99_ratio") is not None:
        latency.append(f"{rollback['max_p99_ratio']:g}x the primary's")
    if latency:
        limits.append(f"its p99 latency passes {' or '.join(latency)}")
    return (f"rolls a canary back when {' or '.join(limits)} over {rollback['window_s']:g} s "
            f"(with at least {rollback['min_requests']} requests in that time)")


def _window(window: dict[str, Any] | None) -> str:
    """A route's rollback window: its errors, and its p99 latency where the policy watches it."""
    if not window:
        return "-"
    text = f"{window['errors']} errors of {window['requests']}"
    if window.get("p99_ms") is not None:
        text += f", p99 {window['p99_ms']:.3g} ms"
    return text


def _steps(rollout: dict[str, Any]) -> str:
    """``10% → [25%] → 100%``: the schedule, the step it is at in brackets."""
    return " → ".join(f"[{share:g}%]" if i == rollout["step"] else f"{share:g}%" for i, share in enumerate(rollout["steps"]))


def _counted_by(dep: Any) -> str:
    """``counted by 2 servers``: how many servers of the cluster counted the live figures."""
    servers = (dep.stats or {}).get("servers", 0)
    return f"counted by {servers} server{'' if servers == 1 else 's'}" if servers else "nothing counted yet"


def _next(dep: Any) -> str:
    """When a rollout's next step is due, and the canary answers it waits for."""
    rollout = dep.rollout
    if not rollout["next_step_at"]:
        return "at its last step"
    when = f"next step at {rollout['next_step_at']}"
    least = rollout.get("min_requests") or 0
    if least:
        seen = ((dep.stats or {}).get("rollout") or {}).get("canary_answered", 0)
        when += f", once the canary answered {least} ({seen} so far; {_counted_by(dep)})"
    return when


@app.command("create")
@handles_errors
def create(
    name: Annotated[str, typer.Argument(help="Deployment name.")],
    routes: Annotated[list[str], typer.Argument(help="MODEL:VERSION[=WEIGHT] ..., primary first.")],
    shadow: Annotated[str | None, typer.Option(help="MODEL:VERSION[=SHARE] mirrored, never returned.")] = None,
    serving: Annotated[str | None, typer.Option(help='Serving settings as JSON, e.g. {"max_batch_size": 16}.')] = None,
    max_error_rate: MaxErrorRateOption = None,
    max_p99_ms: MaxP99Option = None,
    max_p99_ratio: MaxP99RatioOption = None,
    window_s: WindowOption = None,
    rollout: RolloutOption = None,
    every: EveryOption = 300.0,
    canary_requests: CanaryRequestsOption = 0,
    json_out: JsonFlag = False,
) -> None:
    """Create a deployment.

    Examples:

        modelyard deploy create web digits:1=90 digits:2=10 --max-error-rate 0.2

        modelyard deploy create web digits:1=90 digits:2=10 --max-error-rate 0.05 --max-p99-ms 50 --window-s 120

        modelyard deploy create web digits:1=90 digits:2=10 --max-p99-ratio 1.5     # no slower than 1.5x the primary

        modelyard deploy create web digits:1 digits:2=0 --rollout 10,25,50,100 --every 600 --max-error-rate 0.05

        modelyard deploy create web digits:1 digits:2=0 --rollout 10,50,100 --every 600 --canary-requests 500

    (the second one raises digits:2 to 10% now, 25% ten minutes later, ... and promotes it at
    100%; a rollback, by hand or by the error rate, stops it; in the third, a step waits past its
    ten minutes until digits:2 has answered 500 requests without error at the step before)
    """
    dep = client().deployments.create(
        name, [_route(r) for r in routes], shadow=_shadow(shadow), serving=_serving(serving),
        rollback=_rollback(lambda: None, max_error_rate=max_error_rate, max_p99_ms=max_p99_ms,
                           max_p99_ratio=max_p99_ratio, window_s=window_s),
        rollout=_rollout(rollout, every, canary_requests),
    )
    _show(dep, json_out)


@app.command("update")
@handles_errors
def update(
    name: Annotated[str, typer.Argument(help="Deployment name.")],
    routes: Annotated[
        list[str] | None, typer.Argument(help="New routes MODEL:VERSION[=WEIGHT] ..., primary first.")
    ] = None,
    shadow: Annotated[str | None, typer.Option(help="Mirror MODEL:VERSION[=SHARE] (replaces any shadow).")] = None,
    no_shadow: Annotated[bool, typer.Option("--no-shadow", help="Stop mirroring.")] = False,
    serving: Annotated[str | None, typer.Option(help='Serving settings as JSON (replace the old ones).')] = None,
    max_error_rate: MaxErrorRateOption = None,
    max_p99_ms: MaxP99Option = None,
    max_p99_ratio: MaxP99RatioOption = None,
    window_s: WindowOption = None,
    no_rollback: Annotated[bool, typer.Option("--no-rollback", help="No automatic rollback.")] = False,
    rollout: RolloutOption = None,
    every: EveryOption = 300.0,
    canary_requests: CanaryRequestsOption = 0,
    no_rollout: Annotated[bool, typer.Option("--no-rollout", help="Stop the rollout where it is.")] = False,
    description: Annotated[str | None, typer.Option(help="New description.")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Change a deployment's routes, shadow, serving settings, rollback policy or rollout (each
    change takes effect at once; requests in flight finish where they are). What is not given
    stays; new routes or weights stop a rollout under way.

    Examples:

        modelyard deploy update web --shadow digits:3=0.25

        modelyard deploy update web --serving '{"max_batch_size": 16, "timeout_s": 2}'

        modelyard deploy update web --rollout 25,50,100 --every 900

        modelyard deploy update web --no-shadow --no-rollback --no-rollout
    """
    if shadow and no_shadow:
        raise typer.BadParameter("give --shadow or --no-shadow, not both")
    if rollout and no_rollout:
        raise typer.BadParameter("give --rollout or --no-rollout, not both")
    if no_rollback and any(v is not None for v in (max_error_rate, max_p99_ms, max_p99_ratio, window_s)):
        raise typer.BadParameter("give rollback limits (--max-error-rate, --max-p99-ms, --max-p99-ratio, --window-s) or "
                                 "--no-rollback: not both")
    sdk = client()
    changes: dict[str, Any] = {
        "routes": [_route(r) for r in routes] if routes else None,
        "shadow": _shadow(shadow), "remove_shadow": no_shadow or None,
        "serving": _serving(serving), "description": description,
        "rollback": _rollback(lambda: sdk.deployments.get(name).rollback, max_error_rate=max_error_rate,
                              max_p99_ms=max_p99_ms, max_p99_ratio=max_p99_ratio, window_s=window_s),
        "remove_rollback": no_rollback or None,
        "rollout": _rollout(rollout, every, canary_requests), "remove_rollout": no_rollout or None,
    }
    if all(v is None for v in changes.values()):
        raise typer.BadParameter("nothing to change: give routes or an option (see --help)")
    _show(sdk.deployments.update(name, **changes), json_out)


@app.command("list")
@handles_errors
def list_(json_out: JsonFlag = False) -> None:
    """List deployments."""
    deps = list(client().deployments.list())
    if json_out:
        print_json([d.to_dict() for d in deps])
        return
    print_table(
        ["name", "routes", "shadow", "revision"],
        [[d.name, ", ".join(f"{r['model']}:{r['version']}={r['weight']:g}" for r in d.routes),
          f"{d.shadow['model']}:{d.shadow['version']}" if d.shadow else "", d.revision] for d in deps],
        empty="no deployments",
    )


@app.command("show")
@handles_errors
def show(name: str, json_out: JsonFlag = False) -> None:
    """Show a deployment with its live traffic statistics."""
    _show(client().deployments.get(name), json_out)


@app.command("weights")
@handles_errors
def weights(
    name: str,
    routes: Annotated[list[str], typer.Argument(help="MODEL:VERSION=WEIGHT ...")],
    json_out: JsonFlag = False,
) -> None:
    """Change route weights (takes effect at once; requests in flight finish where they are)."""
    parsed = [_route(r) for r in routes]
    dep = client().deployments.set_weights(name, {_label(r): r["weight"] for r in parsed})
    _show(dep, json_out)


@app.command("promote")
@handles_errors
def promote(
    name: str,
    target: Annotated[str | None, typer.Argument(help="MODEL:VERSION to promote (default: the last canary).")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Roll forward: one route takes all the traffic."""
    kwargs: dict[str, Any] = {}
    if target:
        r = _route(target)
        kwargs = {"model": r["model"], "version": r["version"]}
    _show(client().deployments.promote(name, **kwargs), json_out)


@app.command("rollback")
@handles_errors
def rollback(name: str, reason: str = "manual", json_out: JsonFlag = False) -> None:
    """Roll back: all traffic to the primary route."""
    _show(client().deployments.rollback(name, reason=reason), json_out)


@app.command("delete")
@handles_errors
def delete(name: str) -> None:
    """Delete a deployment (the model versions stay)."""
    client().deployments.delete(name)
    typer.echo(f"deleted deployment {name}")


_WATCH_COLUMNS = ["route", "weight", "req/s", "errors/s", "latency ms", "rollback window"]


def _servers(dep: Any) -> int:
    return int((dep.stats or {}).get("servers", 0))


def _frame(dep: Any, before: dict[str, dict[str, Any]], servers_before: int, seconds: float) -> Group:
    """What a deployment's routes did in the last ``seconds`` (``before``: their statistics at
    the last read, summed over ``servers_before`` servers), its rollout and its last event."""
    now, rows = _route_stats(dep), []
    servers = _servers(dep)
    for r in dep.routes:
        label = _label(r)
        new, old = now.get(label, {}), before.get(label, {})
        if new.get("requests", 0) < old.get("requests", 0):  # a server restarted: its counts start again
            old = {}
        served = new.get("requests", 0) - old.get("requests", 0)
        latency_ms = (new.get("latency_ms_avg") or 0.0) * new.get("requests", 0) \
            - (old.get("latency_ms_avg") or 0.0) * old.get("requests", 0)
        if servers != servers_before and servers_before:  # a server joined or left the sum: no rate this time
            rates = ["-", "-", "-"]
        else:
            rates = [f"{served / seconds:,.1f}", f"{(new.get('errors', 0) - old.get('errors', 0)) / seconds:,.1f}",
                     f"{latency_ms / served:.2f}" if served else "-"]
        rows.append([label, f"{r['weight']:g}", *rates, _window(new.get("window"))])
    title = f"{dep.name}, revision {dep.revision}: the last {seconds:.1f} s, {_counted_by(dep)} (Ctrl-C to stop)"
    parts: list[Any] = [make_table(_WATCH_COLUMNS, rows, title=title, whole=("route",))]
    if dep.rollout:
        parts.append(Text(f"rollout {_steps(dep.rollout)}: {_next(dep)}"))
    if dep.events:
        last = dep.events[-1]
        reason = f" ({last['reason']})" if last.get("reason") else ""
        parts.append(Text(f"last event: {last['kind']}{reason} at {last.get('at', '?')}"))
    return Group(*parts)


def _outcome(dep: Any) -> tuple[bool, str] | None:
    """How a rollout ended: (released?, what happened), or ``None`` while it goes on. At a last
    step under 100 it has ended where its schedule said."""
    if dep.rollout is not None:
        return (True, f"at its last step, {dep.rollout['share']:g}% to the canary") if not dep.rollout["next_step_at"] else None
    for event in reversed(dep.events):  # the event that ended it (changes may have come since)
        if event.get("kind") == "promoted" and event.get("reason") == "rollout":
            promoted = event.get("routes") or dep.routes
            return True, f"promoted {_label(promoted[0])}"
        if event.get("kind") == "rolled_back":
            return False, f"rolled back: {event.get('reason', 'no reason given')}"
        if event.get("rollout") == "stopped":
            return False, f"stopped by hand before its end (event {event['kind']})"
    return False, "stopped before its end"


@app.command("watch")
@handles_errors
def watch_(
    name: Annotated[str, typer.Argument(help="Deployment name.")],
    every: Annotated[float, typer.Option("--every", metavar="SECONDS", min=0.1, help="Seconds between two reads.")] = 1.0,
    count: Annotated[int, typer.Option(min=0, help="Reads before stopping (0: until Ctrl-C).")] = 0,
    until_done: Annotated[bool, typer.Option(
        "--until-done",
        help="Stop when the rollout under way ends: exit 0 when it released the canary (promoted, or at its "
             "last step), 1 when it was rolled back or stopped by hand, or when watching stopped first "
             "(--count, Ctrl-C).",
    )] = False,
) -> None:
    """Watch a deployment live: each route's requests and errors a second and mean latency over
    the last read, its automatic-rollback window, the rollout's step and what the next one waits
    for, and the last event. On a terminal the view updates in place; piped, it prints a table
    per read. The figures are the cluster's: every server's, as they shared them in the last second.

    Examples:

        modelyard deploy watch web

        modelyard deploy watch web --until-done && echo released     # gate a release pipeline on the rollout
    """
    with client() as sdk:
        dep = sdk.deployments.get(name)
        ended: tuple[bool, str] | None = None
        if until_done and dep.rollout is None:
            if not any("rollout" in e or e.get("kind") == "rollout_step" for e in dep.events):
                raise typer.BadParameter(f"deployment {name!r} has no rollout for --until-done to wait for (start "
                                         f"one with `modelyard deploy update {name} --rollout 10,50,100`)")
            ended, count = _outcome(dep), 1  # it ended before the watch began: show it once, and how
        last, last_servers, last_at = _route_stats(dep), _servers(dep), time.monotonic()

        def frame() -> tuple[Group, bool]:
            nonlocal last, last_servers, last_at, ended
            dep = sdk.deployments.get(name)
            at = time.monotonic()
            shown = _frame(dep, last, last_servers, max(at - last_at, 1e-9))
            last, last_servers, last_at = _route_stats(dep), _servers(dep), at
            if until_done and ended is None:
                ended = _outcome(dep)
            return shown, ended is None

        watch(every, count, frame)
    if until_done:
        released, what = ended or (False, "still under way (stopped watching before it ended)")
        out().print(f"rollout of {name}: {what}", highlight=False)
        if not released:
            raise typer.Exit(1)
