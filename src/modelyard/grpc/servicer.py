"""``inference.GRPCInferenceService`` over the same data plane as REST.

Authentication comes from the ``authorization`` metadata (``Bearer <key>``); errors are mapped
to gRPC status codes from the one error hierarchy (``ModelYardError.grpc_status``), with the same
messages REST shows.

``ModelStreamInfer`` (what ``tritonclient.grpc``'s ``start_stream``/``async_stream_infer`` use):
every request message gets one ``ModelStreamInferResponse``; a request that fails gets its error
in ``error_message`` and the stream goes on, as Triton does; a missing or bad key ends the stream
with ``UNAUTHENTICATED``. On the native transport the messages of a stream run concurrently (they
are batched like separate calls) and answers leave in completion order, matched by their ``id``;
on the grpcio transport they are answered one after another.

Overload. After a ``ModelInfer`` call got ``RESOURCE_EXHAUSTED`` (its model's queue full), the same
caller's next calls for that model are refused by :meth:`InferenceServicer.screen` before their
message is decoded, while the queue stays full (for at most a second at a time), with the same
status, ``retry-after`` and accounting: on the native transport, without a task or a decode per
refused call. Without it, a flood of calls costs a decode and a trip to the queue each, and on
one core the refusals leave next to nothing for the calls that are served (docs/serving.md).
While such a caller's queue has no room, its connection is not read after a call of its is
answered, served or refused (:meth:`InferenceServicer.hold`), until the queue has room: its next
calls wait in its socket rather than each being read only to be refused.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format

from modelyard.core.inference import PendingInference
from modelyard.core.queue_gates import QueueGate, QueueGates
from modelyard.core.keys import bearer_token
from modelyard.core.platform import Platform
from modelyard.core.principal import Principal
from modelyard.core.residency import refuse_model_files
from modelyard.errors import ModelYardError, QueueFull
from modelyard.grpc.codec import (
    EncodedMessage,
    RawMessage,
    call_target,
    encode_response,
    infer_call,
    response_to_proto,
    stream_response,
)
from modelyard.grpc.http2 import (
    Hold,
    Http2GrpcServer,
    Refusal,
    Screen,
    Start,
    Started,
    StreamHandler,
    UnaryHandler,
    Wait,
)
from modelyard.grpc.proto import grpc_service_pb2 as pb
from modelyard.grpc.proto import grpc_service_pb2_grpc as pb_grpc

__all__ = [
    "InferenceServicer", "status_of", "start_grpc_server", "stream_handlers", "unary_handlers", "screens", "holds",
]

log = logging.getLogger("modelyard.grpc")

T = TypeVar("T")

_SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
_MODEL_INFER = f"/{_SERVICE.full_name}/ModelInfer"
_INTERNAL = "internal server error; see the server log"


def status_of(exc: ModelYardError) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, exc.grpc_status)


def _trailing(exc: ModelYardError) -> tuple[tuple[str, str], ...]:
    return () if exc.retry_after_header is None else (("retry-after", exc.retry_after_header),)


def _authorization(metadata: tuple[tuple[str, str], ...]) -> str | None:
    for key, value in metadata:
        if key == "authorization":
            return str(value)
    return None


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """Thin adapter: decode, authenticate, call the data plane, encode."""

    def __init__(self, platform: Platform, *, encoded_responses: bool = False) -> None:
        self._platform = platform
        #: return ModelInfer answers already serialized (the native transport takes bytes)
        self._encoded = encoded_responses
        #: ((model, version), authorization) -> gate, for :meth:`screen`
        self._gates = QueueGates()
        self._refusal: tuple[ModelYardError | None, Refusal | None] = (None, None)
        #: (metadata, its bearer token): the transport hands every call of one header block the
        #: same metadata tuple, so the key is read off it once (see :meth:`start`)
        self._token: tuple[tuple[tuple[str, str], ...] | None, str | None] = (None, None)

    async def _principal(self, context: grpc.aio.ServicerContext) -> Principal:
        authorization = _authorization(tuple(context.invocation_metadata() or ()))
        token = bearer_token(authorization, source="authorization metadata")
        return await self._platform.keys.authenticate_async(token)

    def screen(self, metadata: tuple[tuple[str, str], ...], framed: bytes) -> Refusal | None:
        """A :data:`~modelyard.grpc.http2.Screen` for ``ModelInfer``: the refusal of a call, read
        off its first bytes, when the same caller (``authorization``) got ``RESOURCE_EXHAUSTED``
        for the same model and version within the last second and that queue is still full;
        else ``None`` (the call is decoded and run as usual). A key revoked since is
        authenticated again rather than refused from here."""
        gate = self._gate(metadata, framed)
        if gate is None:
            return None
        refused = gate.refusal()
        if refused is None:
            return None
        last, refusal = self._refusal
        if last is not refused or refusal is None:  # a gate answers 32 refusals with one error
            refusal = Refusal(status_of(refused), refused.public_message, _trailing(refused), gate.when_room)
            self._refusal = (refused, refusal)
        return refusal

    def hold(self, metadata: tuple[tuple[str, str], ...], framed: bytes) -> Wait | None:
        """A :data:`~modelyard.grpc.http2.Hold` for ``ModelInfer``: after a call of a caller
        screened lately (see :meth:`screen`) is answered, the wait for room while its queue has
        none, so the connection is not read meanwhile: its client's next calls wait in its
        socket instead of each being read to be refused, as HTTP/1.1 connections do
        (``api/v2/protocol.py``). ``None`` when the queue has room, or when a slot was kept for
        this caller as one of the batch just computed (``DynamicBatcher.must_wait``): it reads on."""
        gate = self._gate(metadata, framed)
        if gate is None or not gate.must_wait():
            return None
        gate.seen = time.monotonic()  # still flooding: the table keeps screening it
        return gate.when_room

    def _gate(self, metadata: tuple[tuple[str, str], ...], framed: bytes) -> QueueGate | None:
        """The gate of a call's caller and model, if it has one."""
        if not self._gates:
            return None
        target = call_target(framed, 5)
        if target is None:
            return None
        authorization = _authorization(metadata)
        gate = self._gates.get((target, authorization), time.monotonic())
        if gate is None or not self._platform.keys.remembers_key(gate.secret):
            return None
        return gate

    def _remember_gate(self, principal: Principal, request: Any, context: grpc.aio.ServicerContext) -> None:
        """After a call's ``RESOURCE_EXHAUSTED``: screen the same caller's next calls for that model."""
        if isinstance(request, RawMessage):
            target = call_target(request.data)
        else:
            target = (request.model_name, request.model_version)
        self._remember(principal, target, tuple(context.invocation_metadata() or ()))

    def _remember(
        self, principal: Principal, target: tuple[str, str] | None, metadata: tuple[tuple[str, str], ...]
    ) -> None:
        if target is None:
            return
        gate = self._platform.dataplane.queue_gate(principal, target[0], target[1] or None)
        if gate is not None:
            authorization = _authorization(metadata)
            gate.secret = bearer_token(authorization, source="authorization metadata")  # it was authenticated
            self._gates.put((target, authorization), gate, time.monotonic())

    def start(self, metadata: tuple[tuple[str, str], ...], framed: bytes) -> Started | Refusal | None:
        """A :data:`~modelyard.grpc.http2.Start` for ``ModelInfer`` on the native transport: the
        usual call (its key, model and quotas known from memory, its version loaded) queued
        without a task or a coroutine (``DataPlane.start``), answered from a callback on its
        queued work; a refusal when it fails before that; ``None``: the call takes its task
        (nothing was done)."""
        memo = self._token
        if memo[0] is metadata:
            token = memo[1]
        else:
            try:
                token = bearer_token(_authorization(metadata), source="authorization metadata")
            except ModelYardError:
                return None  # ModelInfer answers a malformed key
            self._token = (metadata, token)
        principal = self._platform.keys.known(token)
        if principal is None:
            return None
        try:
            call = infer_call(RawMessage(framed[5:]))
            pending = self._platform.dataplane.start(
                principal, call.model_name, call.model_version or None, call.request, protocol="grpc"
            )
        except QueueFull as exc:
            self._remember(principal, call_target(framed, 5), metadata)
            return _refusal(exc)
        except Exception as exc:
            return _refusal(exc)
        if pending is None:
            return None
        return _Started(pending)

    async def _guard(self, context: grpc.aio.ServicerContext, work: Callable[[], Awaitable[T]]) -> T:
        try:
            return await work()
        except Exception as exc:
            refusal = _refusal(exc)
            if refusal.trailing:
                context.set_trailing_metadata(refusal.trailing)
            await context.abort(refusal.code, refusal.details)
        raise AssertionError("unreachable")

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerLiveResponse(live=self._platform.dataplane.live())

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerReadyResponse(ready=self._platform.dataplane.ready())

    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> Any:
            (await self._principal(context)).require("server:read")
            meta = self._platform.dataplane.server_metadata()
            return pb.ServerMetadataResponse(**meta)

        return await self._guard(context, work)

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> Any:
            principal = await self._principal(context)
            ok = await self._platform.dataplane.model_ready(principal, request.name, request.version or None)
            return pb.ModelReadyResponse(ready=ok)

        return await self._guard(context, work)

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> Any:
            principal = await self._principal(context)
            meta = await self._platform.dataplane.model_metadata(principal, request.name, request.version or None)
            msg = pb.ModelMetadataResponse(name=meta["name"], versions=meta["versions"], platform=meta["platform"])
            for kind in ("inputs", "outputs"):
                for t in meta[kind]:
                    getattr(msg, kind).add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
            return msg

        return await self._guard(context, work)

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> Any:
            principal = await self._principal(context)
            try:
                return await self._infer(principal, request)
            except QueueFull:
                self._remember_gate(principal, request, context)
                raise

        return await self._guard(context, work)

    async def RepositoryIndex(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Triton's repository index (see ``api/v2/repository.py``)."""
        async def work() -> Any:
            rows = await self._platform.residency.index(await self._principal(context), ready_only=request.ready)
            return pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(**row) for row in rows])

        return await self._guard(context, work)

    async def RepositoryModelLoad(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Load the version a model serves now (see ``api/v2/repository.py``)."""
        async def work() -> Any:
            principal = await self._principal(context)
            refuse_model_files(request.parameters)
            config = request.parameters["config"].string_param if "config" in request.parameters else None
            await self._platform.residency.load(principal, request.model_name, None, config=config)
            return pb.RepositoryModelLoadResponse()

        return await self._guard(context, work)

    async def RepositoryModelUnload(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Unload the version a model serves (see ``api/v2/repository.py``)."""
        async def work() -> Any:
            await self._platform.residency.unload(await self._principal(context), request.model_name, None)
            return pb.RepositoryModelUnloadResponse()

        return await self._guard(context, work)

    async def ModelConfig(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """A version's serving settings as Triton's model configuration (``core/model_config.py``)."""
        async def work() -> Any:
            config = await self._platform.dataplane.model_config(
                await self._principal(context), request.name, request.version or None
            )
            return pb.ModelConfigResponse(config=json_format.ParseDict(config, pb.ModelConfig()))

        return await self._guard(context, work)

    async def ModelStatistics(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Triton's statistics of the versions an (optional) name and version select (see
        ``core/statistics.py``)."""
        async def work() -> Any:
            report = await self._platform.statistics.report(
                await self._principal(context), request.name or None, request.version or None
            )
            return json_format.ParseDict(report, pb.ModelStatisticsResponse())

        return await self._guard(context, work)

    async def LogSettings(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Read the server's log settings, or change those the request carries (see
        ``core/log_settings.py``)."""
        async def work() -> Any:
            principal = await self._principal(context)
            changes = {name: getattr(value, value.WhichOneof("parameter_choice") or "string_param")
                       for name, value in request.settings.items()}
            log = self._platform.log_settings
            settings = log.update(principal, changes) if changes else log.get(principal)
            response = pb.LogSettingsResponse()
            for name, value in settings.items():
                entry = response.settings[name]
                if isinstance(value, bool):
                    entry.bool_param = value
                elif isinstance(value, int):
                    entry.uint32_param = value
                else:
                    entry.string_param = value
            return response

        return await self._guard(context, work)

    async def TraceSetting(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Read the trace settings (the server's, or a model's), or change those the request
        carries; a setting with no value goes back to the server's (see ``core/tracing.py``)."""
        async def work() -> Any:
            principal = await self._principal(context)
            model = request.model_name or None
            if model is not None:
                await self._platform.dataplane.resolve(principal, model, None)  # NOT_FOUND unless the caller's
            changes = {name: list(value.value) or None for name, value in request.settings.items()}
            tracer = self._platform.tracer
            settings = tracer.update(principal, changes, model) if changes else tracer.get(principal, model)
            response = pb.TraceSettingResponse()
            for name, value in settings.items():
                response.settings[name].value.extend(value if isinstance(value, list) else [value])
            return response

        return await self._guard(context, work)

    async def SystemSharedMemoryStatus(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """The caller's system shared-memory regions (see ``core/shared_memory.py``)."""
        async def work() -> Any:
            regions = self._platform.shared_memory.status(await self._principal(context), request.name or None)
            response = pb.SystemSharedMemoryStatusResponse()
            for region in regions:
                response.regions[region["name"]].CopyFrom(
                    pb.SystemSharedMemoryStatusResponse.RegionStatus(**region)
                )
            return response

        return await self._guard(context, work)

    async def SystemSharedMemoryRegister(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> Any:
            self._platform.shared_memory.register(
                await self._principal(context), request.name, request.key, request.offset, request.byte_size
            )
            return pb.SystemSharedMemoryRegisterResponse()

        return await self._guard(context, work)

    async def SystemSharedMemoryUnregister(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> Any:
            self._platform.shared_memory.unregister(await self._principal(context), request.name or None)
            return pb.SystemSharedMemoryUnregisterResponse()

        return await self._guard(context, work)

    async def CudaSharedMemoryStatus(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """None here: tensors stay in host memory (see ``api/v2/shared_memory.py``)."""
        async def work() -> Any:
            self._platform.shared_memory.cuda_status(await self._principal(context), request.name or None)
            return pb.CudaSharedMemoryStatusResponse()

        return await self._guard(context, work)

    async def CudaSharedMemoryRegister(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> Any:
            self._platform.shared_memory.cuda_register(await self._principal(context), request.name)
            return pb.CudaSharedMemoryRegisterResponse()

        return await self._guard(context, work)

    async def CudaSharedMemoryUnregister(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> Any:
            self._platform.shared_memory.cuda_status(await self._principal(context), request.name or None)
            return pb.CudaSharedMemoryUnregisterResponse()

        return await self._guard(context, work)

    async def _infer(self, principal: Principal, request: Any) -> Any:
        call = infer_call(request)
        response = await self._platform.dataplane.infer(
            principal, call.model_name, call.model_version or None, call.request, protocol="grpc"
        )
        if self._encoded:
            return EncodedMessage(encode_response(response, requested=call.request.outputs))
        return response_to_proto(response, raw=True, requested=call.request.outputs)

    async def ModelStreamInfer(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        """grpcio's streaming method: the stream's messages one after another."""
        async for request in request_iterator:
            yield await self.stream_infer(request, context)

    async def stream_infer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """One message of a ``ModelStreamInfer`` stream: its answer, or its error in
        ``error_message`` (see the module docstring)."""
        try:
            principal = await self._principal(context)
        except ModelYardError as exc:
            await context.abort(status_of(exc), exc.public_message)
            raise AssertionError("unreachable") from exc
        try:
            answer = await self._infer(principal, request)
        except ModelYardError as exc:
            if exc.http_status >= 500:
                log.error("gRPC stream message failed: %s", exc.message, exc_info=exc)
            return pb.ModelStreamInferResponse(error_message=exc.public_message)
        except Exception:
            log.exception("unhandled error in a gRPC stream message")
            return pb.ModelStreamInferResponse(error_message=_INTERNAL)
        if self._encoded:
            return stream_response(answer)
        return pb.ModelStreamInferResponse(infer_response=answer)


def _refusal(exc: Exception) -> Refusal:
    """How a call that failed with ``exc`` is answered (logged when it is the server's fault;
    an error that is not a :class:`ModelYardError` is ``INTERNAL``, its details in the log)."""
    if not isinstance(exc, ModelYardError):
        log.error("unhandled error in gRPC call", exc_info=exc)
        return Refusal(grpc.StatusCode.INTERNAL, _INTERNAL)
    if exc.http_status >= 500:
        log.error("gRPC call failed: %s", exc.message, exc_info=exc)
    return Refusal(status_of(exc), exc.public_message, _trailing(exc))


class _Started:
    """A ``ModelInfer`` call :meth:`InferenceServicer.start` queued (see :class:`Started`)."""

    __slots__ = ("_pending",)

    def __init__(self, pending: PendingInference) -> None:
        self._pending = pending

    @property
    def future(self) -> asyncio.Future[Any]:
        return self._pending.future

    def cancel(self) -> None:
        self._pending.cancel()

    def answer(self) -> bytes | Refusal:
        try:
            pending = self._pending
            return encode_response(pending.finish(), requested=pending.request.outputs)
        except Exception as exc:
            return _refusal(exc)


def unary_handlers(servicer: InferenceServicer) -> dict[str, UnaryHandler]:
    """Every unary method of ``inference.GRPCInferenceService``: path -> (parser, method)."""
    handlers: dict[str, UnaryHandler] = {}
    for method in _SERVICE.methods:
        if method.client_streaming or method.server_streaming:
            continue  # see stream_handlers
        parse = RawMessage if method.name == "ModelInfer" else getattr(pb, method.input_type.name).FromString
        handlers[f"/{_SERVICE.full_name}/{method.name}"] = (parse, getattr(servicer, method.name))
    return handlers


def stream_handlers(servicer: InferenceServicer) -> dict[str, StreamHandler]:
    """``ModelStreamInfer`` for the native transport: path -> (parser, method per message)."""
    return {f"/{_SERVICE.full_name}/ModelStreamInfer": (RawMessage, servicer.stream_infer)}


def screens(servicer: InferenceServicer) -> dict[str, Screen]:
    """``ModelInfer``'s screen for the native transport (see :meth:`InferenceServicer.screen`)."""
    return {_MODEL_INFER: servicer.screen}


def holds(servicer: InferenceServicer) -> dict[str, Hold]:
    """``ModelInfer``'s hold for the native transport (see :meth:`InferenceServicer.hold`)."""
    return {_MODEL_INFER: servicer.hold}


def starts(servicer: InferenceServicer) -> dict[str, Start]:
    """``ModelInfer``'s start for the native transport (see :meth:`InferenceServicer.start`)."""
    return {_MODEL_INFER: servicer.start}


async def start_grpc_server(platform: Platform, host: str, port: int) -> Http2GrpcServer | grpc.aio.Server:
    """Start the gRPC server on the running event loop: this package's HTTP/2 transport
    (``grpc_transport = "native"``, the default) or grpcio's ``grpc.aio`` server."""
    settings = platform.settings
    tls = settings.tls_certfile is not None and settings.tls_keyfile is not None
    address = f"{host}:{port}"
    if settings.grpc_transport == "native":
        context = None
        if tls:
            assert settings.tls_certfile is not None and settings.tls_keyfile is not None
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(settings.tls_certfile, settings.tls_keyfile)
            context.set_alpn_protocols(["h2"])
        servicer = InferenceServicer(platform, encoded_responses=True)
        native = Http2GrpcServer(
            unary_handlers(servicer),
            streams=stream_handlers(servicer),
            screens=screens(servicer),
            holds=holds(servicer),
            starts=starts(servicer),
            max_message_bytes=settings.max_request_bytes,
        )
        await native.start(host, port, ssl_context=context, listen_sockets=settings.listen_sockets)
        log.info("gRPC listening on %s:%d (%d socket(s))", host, native.port, native.listening)
        return native
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", settings.max_request_bytes),
            ("grpc.max_send_message_length", settings.max_request_bytes),
            ("grpc.so_reuseport", 0),
        ]
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(platform), server)
    try:
        if tls:
            assert settings.tls_certfile is not None and settings.tls_keyfile is not None
            credentials = grpc.ssl_server_credentials(
                [(settings.tls_keyfile.read_bytes(), settings.tls_certfile.read_bytes())]
            )
            bound = server.add_secure_port(address, credentials)
        else:
            bound = server.add_insecure_port(address)
    except RuntimeError as exc:  # grpcio's word for a port it could not bind
        raise OSError(f"grpcio could not bind {address}: {exc}") from exc
    if bound == 0:
        raise OSError(f"grpcio could not bind {address}")
    await server.start()
    log.info("gRPC (grpcio) listening on %s", address)
    return server
