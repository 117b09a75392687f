"""``client.jobs``: submit training jobs and follow them (``/api/v1/jobs``).

A job is asynchronous: ``submit`` returns at once with a queued :class:`Job`; a job worker on the
server runs it (``queued -> running -> succeeded | failed | cancelled``). Follow it with
:meth:`Jobs.events` (live progress, server-sent events) or :meth:`Jobs.wait`.
"""

from __future__ import annotations

import builtins
import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx

from modelyard.client._transport import Transport, error_from_response
from modelyard.errors import DeadlineExceeded, Unavailable

__all__ = ["Jobs", "Job", "JobEvent", "TERMINAL_STATES"]

TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})


@dataclass(frozen=True, slots=True)
class Job:
    """A job: its state, parameters, latest ``progress`` event, and ``result`` or ``error``.

    For a succeeded ``train`` job, ``result`` holds ``model_name``, ``version``, ``metrics`` and
    ``curves`` (one dict per epoch: ``epoch``, ``train_loss``, ``val_loss``, metrics).
    """

    id: str
    type: str
    state: str
    params: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    progress: dict[str, Any] | None = None
    cancel_requested: bool = False
    attempts: int = 0
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def done(self) -> bool:
        return self.state in TERMINAL_STATES

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Job:
        def t(key: str) -> datetime | None:
            return datetime.fromisoformat(d[key]) if d.get(key) else None

        return cls(
            id=d["id"], type=d["type"], state=d["state"], params=dict(d.get("params") or {}),
            result=d.get("result"), error=d.get("error"), progress=d.get("progress"),
            cancel_requested=bool(d.get("cancel_requested")), attempts=int(d.get("attempts", 0)),
            created_at=t("created_at"), started_at=t("started_at"), finished_at=t("finished_at"),
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("created_at", "started_at", "finished_at"):
            out[key] = out[key].isoformat() if out[key] else None
        return out


@dataclass(frozen=True, slots=True)
class JobEvent:
    """One server-sent event: ``kind`` is ``progress``, ``log``, ``state`` or ``end`` (the last)."""

    id: int | None
    kind: str
    data: dict[str, Any]


class Jobs:
    """Jobs of the caller's tenant. Get it as ``client.jobs``.

    Example::

        job = client.jobs.submit(model_name="digits", dataset="builtin:digits", recipe="mlp",
                                 optimizer="adam", learning_rate=1e-3, epochs=20)
        for event in client.jobs.events(job.id):
            if event.kind == "progress":
                print(event.data["epoch"], event.data["val_loss"])
        job = client.jobs.wait(job.id)
        print(job.result["version"], job.result["metrics"]["accuracy"])
    """

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    def submit(self, type: str = "train", **fields: Any) -> Job:
        """Submit a job; returns the queued job at once. For ``train``: ``model_name``,
        ``dataset`` and any hyper-parameter (flat or as ``hyperparameters={...}``).
        Bad fields raise ``ValidationFailed`` with ``details["field"]`` or ``["column"]``."""
        return Job.from_json(self._t.post("/api/v1/jobs", json={"type": type, **fields}))

    def train(self, *, model_name: str, dataset: str | dict[str, str], **hyperparameters: Any) -> Job:
        """Shorthand for ``submit("train", model_name=..., dataset=..., **hyperparameters)``."""
        return self.submit("train", model_name=model_name, dataset=dataset, **hyperparameters)

    def evaluate(
        self, model_name: str, *, dataset: str | dict[str, str], version: int | str | None = None,
        target: str | None = None, max_rows: int | None = None,
    ) -> Job:
        """Submit an ``evaluate`` job: ``model_name``'s version (default: the one it serves)
        scored on ``dataset``; its ``result`` has ``metric``, ``value``, ``n_rows`` and ``task``
        (docs/training.md, "Evaluate a version")."""
        fields = {"version": version, "target": target, "max_rows": max_rows}
        return self.submit("evaluate", model_name=model_name, dataset=dataset,
                           **{k: v for k, v in fields.items() if v is not None})

    def get(self, job_id: str) -> Job:
        return Job.from_json(self._t.get(_path(job_id)))

    def list(self, *, state: str | None = None, type: str | None = None, page_size: int = 50) -> Iterator[Job]:
        """Jobs, newest first, optionally only in ``state`` / of ``type`` (pages lazily)."""
        for item in self._t.paginate("/api/v1/jobs", params={"state": state, "type": type}, page_size=page_size):
            yield Job.from_json(item)

    def cancel(self, job_id: str) -> Job:
        """Cancel a job (a running one stops within an epoch; nothing is registered)."""
        return Job.from_json(self._t.post(f"{_path(job_id)}/cancel"))

    def logs(self, job_id: str) -> builtins.list[dict[str, Any]]:
        """The job's log lines: ``{"id", "at", "level", "message"}``."""
        return list(self._t.get(f"{_path(job_id)}/logs").get("items", []))

    def events(self, job_id: str, *, after: int = 0, timeout: float | None = None) -> Iterator[JobEvent]:
        """Live events of a job until it ends (the last one has ``kind == "end"``)."""
        http: httpx.Client = self._t._http  # the transport's authenticated session
        try:
            with http.stream("GET", f"{_path(job_id)}/events", params={"after": after},
                             timeout=httpx.Timeout(timeout, connect=10.0)) as response:
                if response.status_code >= 400:
                    response.read()
                    raise error_from_response(response)
                yield from _parse_sse(response.iter_lines())
        except httpx.TimeoutException as exc:
            raise DeadlineExceeded(f"no event from job {job_id} in time") from exc
        except httpx.TransportError as exc:
            raise Unavailable(f"lost the event stream of job {job_id}: {exc}",
                              details={"reason": "connect"}) from exc

    def wait(self, job_id: str, *, timeout: float | None = None, poll_s: float = 1.0) -> Job:
        """Block until the job ends and return it (``DeadlineExceeded`` after ``timeout`` s)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if job.done:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise DeadlineExceeded(f"job {job_id} is still {job.state} after {timeout} s")
            time.sleep(poll_s if deadline is None else max(0.0, min(poll_s, deadline - time.monotonic())))


def _path(job_id: str) -> str:
    return f"/api/v1/jobs/{quote(job_id, safe='')}"


def _parse_sse(lines: Iterator[str]) -> Iterator[JobEvent]:
    event_id: int | None = None
    kind = "message"
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                payload = json.loads("\n".join(data))
                yield JobEvent(event_id, kind, payload if isinstance(payload, dict) else {"value": payload})
                if kind == "end":
                    return
            event_id, kind, data = None, "message", []
            continue
        if line.startswith(":"):
            continue
        key, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if key == "id" and value.isdigit():
            event_id = int(value)
        elif key == "event":
            kind = value
        elif key == "data":
            data.append(value)
