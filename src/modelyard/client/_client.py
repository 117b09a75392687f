"""``Client``: the entry point of the Python SDK."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cached_property
from types import TracebackType
from typing import Any

import httpx
import numpy as np

from modelyard.client._datasets import Datasets
from modelyard.client._deployments import Deployments
from modelyard.client._inference import Inference, Inputs, ModelMetadata
from modelyard.client._jobs import Jobs
from modelyard.client._llm import LanguageModels
from modelyard.client._memory import Memory
from modelyard.client._statistics import Statistics
from modelyard.client._traces import Traces
from modelyard.client._models import Models
from modelyard.client._optimize import Optimize
from modelyard.client._tenancy import Audit, Keys, Tenants, Usage
from modelyard.client._transport import Transport
from modelyard.errors import ModelYardError

__all__ = ["Client"]


class Client:
    """A connection to one ModelYard server, authenticated by one API key.

    ``url`` defaults to ``$MODELYARD_URL`` (else ``http://127.0.0.1:8000``) and ``api_key`` to
    ``$MODELYARD_API_KEY``. Every failure raises the typed :mod:`modelyard.errors` class the
    server named (``Unauthenticated``, ``ModelNotFound``, ``InvalidInput``, ``RateLimited`` with
    ``retry_after``...); an unreachable server raises ``Unavailable``. ``transport`` lets tests
    inject an ``httpx.BaseTransport`` such as ``httpx.MockTransport``.

    Example::

        from modelyard import Client

        with Client(url="http://127.0.0.1:8000", api_key="my_...") as client:
            client.models.push("digits.onnx", name="digits", stage="production")
            out = client.predict("digits", x)          # x: float32 array [n, 64]
            print(out["label"])

    Resources are properties (``client.models``, ...) sharing this client's transport.
    """

    def __init__(
        self,
        *,
        url: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self._transport = Transport(
            url=url, api_key=api_key, timeout=timeout, transport=transport, headers=headers
        )
        self._inference = Inference(self._transport)

    @property
    def url(self) -> str:
        """The server's base URL."""
        return self._transport.url

    @cached_property
    def models(self) -> Models:
        """The model registry: push, list, get, versions, promote, delete."""
        return Models(self._transport)

    @cached_property
    def datasets(self) -> Datasets:
        """Datasets: push (CSV, Parquet, NPZ, JSONL), list, get, delete; built-ins by name."""
        return Datasets(self._transport)

    @cached_property
    def jobs(self) -> Jobs:
        """Jobs: submit training, list, get, cancel, logs, live events, wait."""
        return Jobs(self._transport)

    @cached_property
    def optimize(self) -> Optimize:
        """Optimization jobs (quantize, prune, fp16; guarded) and version comparison."""
        return Optimize(self._transport)

    @cached_property
    def memory(self) -> Memory:
        """Your versions in the server's memory; load, pin and unload them ahead of traffic."""
        return Memory(self._transport)

    @cached_property
    def statistics(self) -> Statistics:
        """Per-version inference statistics: answered, failed, queued, computing, batch sizes."""
        return Statistics(self._transport)

    @cached_property
    def traces(self) -> Traces:
        """Request trace settings (Triton's trace extension); ``modelyard.client.summarize``
        reads the files the server writes."""
        return Traces(self._transport)

    @cached_property
    def deployments(self) -> Deployments:
        """Deployments: canary weights, shadow, serving settings, promote and rollback."""
        return Deployments(self._transport)

    @cached_property
    def tenants(self) -> Tenants:
        """Tenant administration (admin keys): create, list, disable, quotas, delete."""
        return Tenants(self._transport)

    @cached_property
    def keys(self) -> Keys:
        """API keys: create (secret shown once), list (prefixes), revoke."""
        return Keys(self._transport)

    @cached_property
    def usage(self) -> Usage:
        """Usage per tenant, model and hour, with cost; CSV export."""
        return Usage(self._transport)

    @cached_property
    def audit(self) -> Audit:
        """The audit log (owners and admins)."""
        return Audit(self._transport)

    @cached_property
    def llm(self) -> LanguageModels:
        """Language and embedding models: push Hugging Face folders, add upstream engines, call /v1."""
        return LanguageModels(self._transport)

    # -- inference ------------------------------------------------------------------------------
    def predict(
        self,
        name: str,
        inputs: Inputs,
        *,
        version: int | str | None = None,
        outputs: Sequence[str] | None = None,
        binary: bool = True,
        request_id: str | None = None,
        deadline_s: float | None = None,
        priority: int = 0,
        top_classes: int | None = None,
        routing_key: str | None = None,
    ) -> dict[str, np.ndarray]:
        """Run model ``name`` (its production version unless ``version``) and return its outputs.

        ``inputs`` is ``{input_name: array}``, or one bare array for a model with a single input
        (its name is read from the model's metadata, cached per model and version). Arrays (or
        nested lists) are cast to each input's declared datatype; strings go as BYTES.
        ``outputs`` names the outputs to return (default: all). With ``binary`` (the default)
        tensors travel with the OIP v2 binary tensor extension; ``binary=False`` sends JSON.
        ``deadline_s``: the server gives up on the request after this long (``DeadlineExceeded``,
        504) and drops its work; shorter than the model's ``timeout_s`` only (sent as the
        request's ``timeout`` parameter, in microseconds, as Triton's clients send it).
        ``priority``: 1 goes ahead of every other request queued for the version, then 2, ...;
        0 (the default) after every level. ``top_classes``: each of ``outputs`` comes back as its
        ``top_classes`` highest-valued classes per row, ``b"value:index[:label]"`` (Triton's
        classification extension). ``routing_key`` (a user or session id): a deployment sends
        every request with the same key to the same version (sticky routing).

        Example::

            out = client.predict("digits", np.zeros((1, 64), np.float32), outputs=["label"])
            out["label"]          # array([0])
        """
        return self._inference.predict(
            name, inputs, version=version, outputs=outputs, binary=binary, request_id=request_id,
            deadline_s=deadline_s, priority=priority, top_classes=top_classes, routing_key=routing_key,
        )

    def metadata(self, name: str, *, version: int | str | None = None) -> ModelMetadata:
        """The served signature (inputs, outputs) of ``name`` or of one of its versions."""
        return self._inference.metadata(name, version=version, refresh=True)

    # -- server ---------------------------------------------------------------------------------
    def console_url(self) -> str:
        """The address of the server's web console (``docs/console.md``), once the server says it
        serves one; ``NotFound`` when it is turned off (``MODELYARD_CONSOLE=false``), ``Unavailable``
        if the server cannot be reached. Needs no key (the page asks for one)."""
        self._transport.request("GET", "/console/", headers={"Accept": "text/html"})
        return f"{self.url.rstrip('/')}/console/"

    def health(self) -> dict[str, bool]:
        """``{"live": bool, "ready": bool}``; needs no key. ``Unavailable`` if unreachable."""
        live = bool(self._transport.get("/v2/health/live").get("live"))
        try:
            ready = bool(self._transport.get("/v2/health/ready").get("ready"))
        except ModelYardError as exc:
            if exc.http_status != 503 or exc.details.get("reason") == "connect":
                raise
            ready = False
        return {"live": live, "ready": ready}

    def whoami(self) -> dict[str, Any]:
        """The caller's tenant, role, key id and scopes, and the server's version."""
        result: dict[str, Any] = self._transport.get("/api/v1/whoami")
        return result

    # -- lifetime -------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the connection pool. The client cannot be used afterwards."""
        self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client(url={self.url!r})"
