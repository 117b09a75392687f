"""``inference.GRPCInferenceService`` over the same data plane as REST.

Authentication comes from the ``authorization`` metadata (``Bearer <key>``); errors are mapped
to gRPC status codes from the one error hierarchy (``ModelYardError.grpc_status``), with the same
messages REST shows.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from modelyard.core.platform import Platform
from modelyard.core.principal import Principal
from modelyard.errors import ModelYardError, Unauthenticated
from modelyard.grpc.codec import request_from_proto, response_to_proto
from modelyard.grpc.proto import grpc_service_pb2 as pb
from modelyard.grpc.proto import grpc_service_pb2_grpc as pb_grpc

__all__ = ["InferenceServicer", "status_of"]

log = logging.getLogger("modelyard.grpc")

T = TypeVar("T")


def status_of(exc: ModelYardError) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, exc.grpc_status)


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """Thin adapter: decode, authenticate, call the data plane, encode."""

    def __init__(self, platform: Platform) -> None:
        self._platform = platform

    async def _principal(self, context: grpc.aio.ServicerContext) -> Principal:
        token: str | None = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                scheme, _, rest = str(value).partition(" ")
                if scheme.lower() != "bearer" or not rest.strip():
                    raise Unauthenticated("malformed authorization metadata; expected 'Bearer <key>'")
                token = rest.strip()
        return await self._platform.keys.authenticate_async(token)

    async def _guard(self, context: grpc.aio.ServicerContext, work: Callable[[], Awaitable[T]]) -> T:
        try:
            return await work()
        except ModelYardError as exc:
            if exc.http_status >= 500:
                log.error("gRPC call failed: %s", exc.message, exc_info=exc)
            if exc.retry_after is not None:
                context.set_trailing_metadata((("retry-after", str(max(1, round(exc.retry_after)))),))
            await context.abort(status_of(exc), exc.public_message)
        except Exception:
            log.exception("unhandled error in gRPC call")
            await context.abort(grpc.StatusCode.INTERNAL, "internal server error; see the server log")
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
            infer_request = request_from_proto(request)
            response = await self._platform.dataplane.infer(
                principal, request.model_name, request.model_version or None, infer_request, protocol="grpc"
            )
            return response_to_proto(response, raw=True, requested=infer_request.outputs)

        return await self._guard(context, work)


async def start_grpc_server(platform: Platform, host: str, port: int) -> grpc.aio.Server:
    """Start the aio gRPC server on the running event loop."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", platform.settings.max_request_bytes),
            ("grpc.max_send_message_length", platform.settings.max_request_bytes),
            ("grpc.so_reuseport", 0),
        ]
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(platform), server)
    address = f"{host}:{port}"
    settings = platform.settings
    if settings.tls_certfile is not None and settings.tls_keyfile is not None:
        credentials = grpc.ssl_server_credentials(
            [(settings.tls_keyfile.read_bytes(), settings.tls_certfile.read_bytes())]
        )
        bound = server.add_secure_port(address, credentials)
    else:
        bound = server.add_insecure_port(address)
    if bound == 0:
        raise RuntimeError(f"cannot bind gRPC on {address}")
    await server.start()
    log.info("gRPC listening on %s", address)
    return server
