"""Running a server: opens the platform, bootstraps the admin key, serves HTTP (and gRPC when
available) until SIGTERM/SIGINT, then drains in-flight requests and exits cleanly."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
from collections.abc import Callable
from collections.abc import Coroutine
from types import FrameType
from typing import Any, NoReturn, TypeVar

import uvicorn

from modelyard.api.app import create_app
from modelyard.api.v2.protocol import InferenceProtocol
from modelyard.config import Settings
from modelyard.core.cluster import server_id
from modelyard.core.cluster_rates import ClusterRates
from modelyard.core.cluster_traffic import ClusterTraffic
from modelyard.core.demo import ensure_demo_model
from modelyard.core.platform import Platform
from modelyard.listeners import open_listeners

__all__ = ["run_server", "prepare_platform", "serve_async", "build_http_server", "run_on_fast_loop", "raise_open_file_limit"]

log = logging.getLogger("modelyard.server")

T = TypeVar("T")
_GC_YOUNG_THRESHOLD = 20_000
#: where the open-file limit is raised to when the hard limit is unlimited (Linux's default
#: ``fs.nr_open``); and below what a warning says a flood's connections may be refused
_OPEN_FILES_CAP = 1_048_576
_OPEN_FILES_WANTED = 4_096


def raise_open_file_limit() -> tuple[int, int] | None:
    """Raise this process's soft limit on open files to its hard limit and return ``(before,
    after)``, or ``None`` where there is no such limit (not POSIX). Every connection takes a file
    descriptor: with the soft limit many systems start a service with (1,024), a flood over 1,024
    connections would be refused at ``accept`` while the hard limit allows far more. Any process
    may raise its soft limit up to its hard one; nothing above it is asked for."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = _OPEN_FILES_CAP if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):  # e.g. above fs.nr_open: keep what there is
            log.warning("could not raise the open-file limit from %d to %d", soft, wanted)
        else:
            log.info("open-file limit raised from %d to %d (one per connection)", soft, wanted)
    after = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if after != resource.RLIM_INFINITY and after < _OPEN_FILES_WANTED:
        log.warning(
            "this process may open only %d files, and every connection takes one: a flood of "
            "connections will be refused at accept. Raise the hard limit (ulimit -Hn, or "
            "LimitNOFILE= in a systemd unit) to %d or more.", after, _OPEN_FILES_WANTED,
        )
    return soft, after


def run_on_fast_loop(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on uvloop (libuv: cheaper socket I/O and callbacks) where it is installed."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


class _DrainingServer(uvicorn.Server):
    """uvicorn, but readiness turns false the moment a stop signal arrives."""

    def __init__(self, config: uvicorn.Config, platform: Platform) -> None:
        super().__init__(config)
        self._platform = platform

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._platform.dataplane.accepting = False
        super().handle_exit(sig, frame)
        if sig == signal.SIGTERM:
            # uvicorn re-raises captured signals after its shutdown, which would kill the process
            # before the model manager drains; a drained SIGTERM is a clean exit (status 0).
            captured = getattr(self, "_captured_signals", None)
            if isinstance(captured, list) and sig in captured:
                captured.remove(sig)


def prepare_platform(settings: Settings, *, announce: Callable[[str], None] = print) -> Platform:
    """Open the platform, create the first admin key if needed, register the demo model."""
    platform = Platform.open(settings)
    admin = settings.admin_key.get_secret_value() if settings.admin_key else None
    secret = platform.keys.bootstrap(admin)
    if secret:
        announce(
            "\n  First start: an admin API key was created. It is shown only this once:\n\n"
            f"    {secret}\n\n"
            "  Save it now (export MODELYARD_API_KEY=...). Only its hash is stored.\n"
        )
    if settings.demo_model:
        tenant = platform.keys.ensure_default_tenant()
        info = ensure_demo_model(platform.registry, platform.artifacts, tenant, settings.resolved_home / "tmp")
        key = secret or "$MODELYARD_API_KEY"
        scheme = "https" if settings.tls_certfile else "http"
        base = f"{scheme}://{settings.host}:{settings.http_port}"
        announce(
            f"  Demo model ready: {info.model_name} version {info.version}. Try it:\n\n"
            f'    curl -s -H "Authorization: Bearer {key}" {base}/v2/models/{info.model_name}/infer '
            "-d @examples/digit.json\n"
            + (f"\n  Or look at it in the browser: {base}/console/ (sign in with the key)\n" if settings.console else "")
        )
    return platform


def build_http_server(settings: Settings, platform: Platform) -> uvicorn.Server:
    """The uvicorn server for ``create_app``; readiness turns false on SIGTERM/SIGINT.

    Its HTTP protocol (:class:`InferenceProtocol`) answers OIP v2 inference without the ASGI
    stack; every other request goes to the app."""
    app = create_app(settings, platform=platform)
    config = uvicorn.Config(
        app,
        http=InferenceProtocol.bound(platform),
        host=settings.host,
        port=settings.http_port,
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=int(settings.drain_timeout_s) or None,
        timeout_keep_alive=settings.keep_alive_s,
        lifespan="on",
        ssl_certfile=str(settings.tls_certfile) if settings.tls_certfile else None,
        ssl_keyfile=str(settings.tls_keyfile) if settings.tls_keyfile else None,
    )
    return _DrainingServer(config, platform)


async def serve_async(settings: Settings, platform: Platform, http: uvicorn.Server) -> None:
    """Serve HTTP (and gRPC when enabled) on this event loop until ``http`` exits, once the
    pinned model versions are loaded."""
    sockets = _listen_http(settings, http.config)
    try:
        await _serve_on(sockets, settings, platform, http)
    finally:
        for sock in sockets:  # uvicorn closes them when it served; not when the start failed
            sock.close()


def _listen_http(settings: Settings, config: uvicorn.Config) -> list[socket.socket]:
    scheme = "https" if config.is_ssl else "http"
    try:
        sockets = open_listeners(settings.host, settings.http_port, count=settings.listen_sockets, backlog=config.backlog)
    except OSError as exc:
        _cannot_listen(f"{scheme}://{settings.host}:{settings.http_port}", exc, "MODELYARD_HTTP_PORT")
    port = sockets[0].getsockname()[1]
    log.info("listening on %s://%s:%d (%d socket(s))", scheme, settings.host, port, len(sockets))
    return sockets


def _cannot_listen(address: str, exc: OSError, setting: str) -> NoReturn:
    log.error(
        "cannot listen on %s: %s. If another server runs there, stop it, or choose another port (%s).",
        address, exc, setting,
    )
    raise SystemExit(1) from exc


async def _serve_on(sockets: list[socket.socket], settings: Settings, platform: Platform, http: uvicorn.Server) -> None:
    pinned = await platform.residency.restore_pins()
    if pinned:
        log.info("loaded %d pinned model version(s)", pinned)
    grpc_server = None
    if settings.grpc_enabled:
        from modelyard.grpc.servicer import start_grpc_server

        try:
            grpc_server = await start_grpc_server(platform, settings.host, settings.grpc_port)
        except OSError as exc:
            _cannot_listen(f"grpc://{settings.host}:{settings.grpc_port}", exc, "MODELYARD_GRPC_PORT")
    from modelyard.jobs.pool import JobWorkers

    job_workers = await asyncio.to_thread(JobWorkers(settings, platform.jobs).start)
    loop = asyncio.get_running_loop()
    followers = []  # what this server keeps in step with its cluster's database
    if settings.pin_sync_s > 0:
        followers.append(loop.create_task(platform.residency.follow_pins(settings.pin_sync_s)))
    if settings.rollout_check_s > 0:
        followers.append(loop.create_task(platform.deployments.follow_rollouts(settings.rollout_check_s)))
    server = server_id()
    shared: list[ClusterTraffic | ClusterRates] = []  # what leaves the cluster's figures when it stops
    if settings.traffic_share_s > 0:
        shared.append(ClusterTraffic(
            platform.db, platform.deployments, server=server, on_trip=platform.dataplane.roll_back,
            tenant_name=lambda tenant_id: platform.tenants.get(tenant_id).name,
        ))
        followers.append(loop.create_task(shared[-1].follow(settings.traffic_share_s)))
    if settings.rate_share_s > 0:
        shared.append(ClusterRates(platform.db, platform.limits.rates, server=server))
        followers.append(loop.create_task(shared[-1].follow(settings.rate_share_s)))
    try:
        await http.serve(sockets=sockets)
    finally:
        for task in followers:
            task.cancel()
        await asyncio.gather(*followers, return_exceptions=True)
        for figures in shared:
            await _leave(figures)
        if grpc_server is not None:
            await grpc_server.stop(grace=settings.drain_timeout_s)
        await asyncio.to_thread(job_workers.stop, max(settings.drain_timeout_s, 10.0))


async def _leave(figures: ClusterTraffic | ClusterRates) -> None:
    try:
        await asyncio.to_thread(figures.leave)
    except Exception as exc:  # its rows stop counting after LIVE_S anyway
        log.warning("could not remove this server's rows from %s: %s", type(figures).__name__, exc)


def _settle_heap() -> None:
    """Tune the garbage collector for the serving process (a process-wide choice, so only the
    process that serves makes it, not every caller of :func:`serve_async`).

    Everything the imports and the start made lives until exit: keep the collector from ever
    walking it again (full collections of those ~300k objects stalled requests ~100 ms at p99).
    Requests allocate a few hundred objects each and free them at once: young collections every
    700 allocations cost ~4% of the loop for nothing; every 20,000 is plenty."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(_GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def run_server(settings: Settings, *, platform: Platform | None = None) -> int:
    """Serve until stopped; returns the process exit code."""
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.host not in ("127.0.0.1", "localhost", "::1") and settings.tls_certfile is None:
        log.warning(
            "binding %s (not loopback) without TLS: API keys travel in clear text. "
            "Configure a certificate (MODELYARD_TLS_CERTFILE / MODELYARD_TLS_KEYFILE) or bind 127.0.0.1.",
            settings.host,
        )
    raise_open_file_limit()
    platform = platform or prepare_platform(settings)
    server = build_http_server(settings, platform)

    async def main() -> None:
        try:
            await serve_async(settings, platform, server)
        finally:
            await platform.aclose()

    _settle_heap()
    run_on_fast_loop(main())
    return 0

