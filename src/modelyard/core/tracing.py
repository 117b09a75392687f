"""Request traces: Triton's trace extension (``GET``/``POST /v2/trace/setting`` and
``/v2/models/{m}/trace/setting``, gRPC ``TraceSetting``; ``tritonclient``'s
``get_trace_settings`` and ``update_trace_settings``).

With ``trace_level`` ``["TIMESTAMPS"]``, every ``trace_rate``-th request to a model is traced, up to
``trace_count`` traces (-1: no limit; what is left shows in the settings), and each trace is one
JSON line appended to ``trace_file`` in the server's ``traces`` folder (``$MODELYARD_HOME/traces``)::

    {"id": 7, "tenant": "default", "model_name": "digits", "model_version": "1", "outcome": "ok",
     "timestamps": [{"name": "REQUEST_START", "ns": ...}, {"name": "QUEUE_START", "ns": ...},
                    {"name": "COMPUTE_START", "ns": ...}, {"name": "COMPUTE_END", "ns": ...},
                    {"name": "REQUEST_END", "ns": ...}]}

Timestamps are nanoseconds since the epoch, from one monotonic clock. ``QUEUE_START`` (queued
for its batch), ``COMPUTE_START`` and ``COMPUTE_END`` (its batch ran) are there for requests that
took the usual path (their version loaded, answered from a callback); the others, and those
answered from the response cache (``outcome`` ``"cache hit"``), have ``REQUEST_START`` and
``REQUEST_END``. A request that failed has its error code as ``outcome``.

Settings are the server's (global) and per model of a tenant (over the global ones; a setting
given as ``null`` goes back to the global one). Values are strings or lists of strings, as in
Triton: ``trace_level`` ``["OFF"]`` or ``["TIMESTAMPS"]`` (``TENSORS`` is refused: inputs and
outputs are the tenants' data), ``trace_rate`` (>= 1), ``trace_count`` (>= -1),
``log_frequency`` (the file is flushed every that many traces; 0: at each), ``trace_file`` (a
file name, no folders: the traces folder is the server's), ``trace_mode`` ``"triton"``. Anyone
who may read the server's metadata reads them (a model's: whoever may see the model); only
administrators change them (``server:manage``): traces are the server's disk and name every
tenant's models. Each model of a tenant counts its own requests for the rate; ``trace_count``
is that of the settings it comes from (a model's own, else the global one, which its models then
share). Per server process: in a cluster each server writes its own file.

The lines are written by a thread of their own (``core/trace_files.py``): a traced request puts its
line on a queue and goes on; a folder or disk that cannot take it drops the line (counted in
``modelyard_traces_dropped_total``, and logged), never the request.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from modelyard.core.principal import Principal
from modelyard.core.registry import VersionInfo
from modelyard.core.trace_files import Dropped, TraceFiles
from modelyard.errors import InvalidInput

__all__ = ["Tracer", "Trace"]

_DEFAULTS: dict[str, Any] = {
    "trace_level": ["OFF"], "trace_rate": "1000", "trace_count": "-1", "log_frequency": "0",
    "trace_file": "trace.jsonl", "trace_mode": "triton",
}
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _whole(value: Any, name: str, minimum: int) -> str:
    text = value[0] if isinstance(value, list) and len(value) == 1 else value
    try:
        number = int(str(text))
    except ValueError:
        number = minimum - 1
    if isinstance(text, bool) or number < minimum:
        raise InvalidInput(f"{name} must be a whole number >= {minimum}, got {value!r}", details={"param": name})
    return str(number)


def _checked(name: str, value: Any) -> Any:
    """A setting's value as it is kept (Triton's strings and lists), or :class:`InvalidInput`."""
    if name == "trace_level":
        levels = [value] if isinstance(value, str) else value
        if not isinstance(levels, list) or not levels or any(lv not in ("OFF", "TIMESTAMPS") for lv in levels):
            raise InvalidInput(
                'trace_level must be ["OFF"] or ["TIMESTAMPS"] (TENSORS is not offered: tensors are the tenants\' data)',
                details={"param": name},
            )
        return ["TIMESTAMPS"] if "TIMESTAMPS" in levels else ["OFF"]
    if name == "trace_rate":
        return _whole(value, name, 1)
    if name == "trace_count":
        return _whole(value, name, -1)
    if name == "log_frequency":
        return _whole(value, name, 0)
    if name == "trace_file":
        text = value[0] if isinstance(value, list) and len(value) == 1 else value
        if not isinstance(text, str) or not _FILE_NAME.match(text):
            raise InvalidInput(
                "trace_file must be a file name (letters, digits, '.', '_', '-'; no folders): traces go to the "
                "server's traces folder", details={"param": name},
            )
        return text
    if name == "trace_mode":
        text = value[0] if isinstance(value, list) and len(value) == 1 else value
        if text != "triton":
            raise InvalidInput('trace_mode must be "triton"', details={"param": name})
        return text
    raise InvalidInput(f"unknown trace setting {name!r}; expected one of {', '.join(_DEFAULTS)}", details={"param": name})


class Trace:
    """One sampled request's timestamps (``perf_counter`` seconds until written)."""

    __slots__ = ("id", "info", "started", "scope")

    def __init__(self, trace_id: int, info: VersionInfo, started: float, scope: _Scope) -> None:
        self.id, self.info, self.started, self.scope = trace_id, info, started, scope


class _Scope:
    """The effective settings of one model of a tenant, and its counts."""

    __slots__ = ("settings", "on", "rate", "seen", "file", "log_frequency")

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings  # the dict whose trace_count is decremented (global or the model's)
        self.on = False
        self.rate = 1
        self.seen = 0
        self.file = ""
        self.log_frequency = 0


class Tracer:
    """See the module. ``folder``: where trace files go; ``dropped``: told of lines that could not
    be written (a reason, how many). Use from the event loop only."""

    def __init__(self, folder: Path, *, dropped: Dropped | None = None) -> None:
        self._global: dict[str, Any] = dict(_DEFAULTS)
        self._models: dict[tuple[str, str], dict[str, Any]] = {}  # (tenant id, model) -> overrides
        self._scopes: dict[tuple[str, str], _Scope] = {}
        self.files = TraceFiles(folder, dropped=dropped)
        self._ids = 0
        #: wall-clock nanoseconds at perf_counter() == 0
        self._epoch_ns = time.time_ns() - time.perf_counter_ns()
        #: whether any scope may trace (checked before anything else, on every request)
        self.on = False

    # -- settings --------------------------------------------------------------------------
    def get(self, principal: Principal, model: str | None = None) -> dict[str, Any]:
        principal.require("server:read")
        if model is None:
            return dict(self._global)
        return {**self._global, **self._models.get((principal.tenant_id, model), {})}

    def update(self, principal: Principal, changes: dict[str, Any], model: str | None = None) -> dict[str, Any]:
        """Apply ``changes`` (nothing changes when one is refused); ``None`` as a model's value
        takes the global one again."""
        principal.require("server:manage")
        checked = {name: None if value is None and model is not None and name in _DEFAULTS else _checked(name, value)
                   for name, value in changes.items()}
        if model is None:
            self._global.update(checked)
        else:
            overrides = self._models.setdefault((principal.tenant_id, model), {})
            for name, value in checked.items():
                if value is None:
                    overrides.pop(name, None)
                else:
                    overrides[name] = value
        self._scopes.clear()
        self.on = self._global["trace_level"] == ["TIMESTAMPS"] or any(
            o.get("trace_level") == ["TIMESTAMPS"] for o in self._models.values()
        )
        return self.get(principal, model)

    # -- traces ----------------------------------------------------------------------------
    def sample(self, info: VersionInfo, started: float) -> Trace | None:
        """A trace for this request to ``info`` when it is one to trace (call when :attr:`on`)."""
        scope = self._scope(info)
        if not scope.on:
            return None
        scope.seen += 1
        if scope.seen % scope.rate:
            return None
        count = int(scope.settings.get("trace_count", self._global["trace_count"]))
        if count == 0:
            return None
        if count > 0:
            scope.settings["trace_count"] = str(count - 1)
        self._ids += 1
        return Trace(self._ids, info, started, scope)

    def end(
        self, trace: Trace, *, ran: tuple[float, float, float] | None = None, outcome: str = "ok"
    ) -> None:
        """Write ``trace``, ending now; ``ran``: (queued, batch launched, batch compute seconds)."""
        ns = self._ns
        stamps = [("REQUEST_START", trace.started)]
        if ran is not None:
            queued, launched, compute_s = ran
            stamps += [("QUEUE_START", queued), ("COMPUTE_START", launched), ("COMPUTE_END", launched + compute_s)]
        stamps.append(("REQUEST_END", time.perf_counter()))
        info = trace.info
        line = json.dumps({
            "id": trace.id, "tenant": info.tenant_name, "model_name": info.model_name,
            "model_version": str(info.version), "outcome": outcome,
            "timestamps": [{"name": name, "ns": ns(at)} for name, at in stamps],
        })
        scope = trace.scope
        self.files.append(scope.file, line, scope.log_frequency)

    def close(self) -> None:
        self.files.close()

    # -- helpers ---------------------------------------------------------------------------
    def _ns(self, perf_s: float) -> int:
        return self._epoch_ns + int(perf_s * 1e9)

    def _scope(self, info: VersionInfo) -> _Scope:
        key = (info.tenant_id, info.model_name)
        scope = self._scopes.get(key)
        if scope is None:
            overrides = self._models.get(key, {})
            settings = {**self._global, **overrides}
            scope = _Scope(overrides if "trace_count" in overrides else self._global)
            scope.on = settings["trace_level"] == ["TIMESTAMPS"]
            scope.rate = int(settings["trace_rate"])
            scope.file = settings["trace_file"]
            scope.log_frequency = int(settings["log_frequency"])
            self._scopes[key] = scope
        return scope
