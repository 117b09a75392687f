"""Every gRPC method of ``inference.GRPCInferenceService``, read from the service descriptor so a
method added later is covered, against every kind of caller: public health calls answer anyone;
everything else refuses missing, malformed, revoked and expired keys, and another tenant's key
gets NOT_FOUND for this tenant's model, exactly as for a model that does not exist."""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
import pytest

from modelyard.grpc.proto import grpc_service_pb2 as pb
from modelyard.grpc.proto import grpc_service_pb2_grpc as pb_grpc
from tests.security.conftest import ROLES, World

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
PUBLIC = {"ServerLive", "ServerReady"}
#: streaming methods are not served (UNIMPLEMENTED for everyone); unary ones are checked.
UNARY = [m.name for m in SERVICE.methods if not m.client_streaming and not m.server_streaming]


def _request(method: str, model: str) -> Any:
    message = getattr(pb, SERVICE.methods_by_name[method].input_type.name)()
    if method == "ModelInfer":
        message.model_name = model
        tensor = message.inputs.add(name="x", datatype="FP32", shape=[1, 3])
        message.raw_input_contents.append(np.ones((1, 3), np.float32).tobytes())
        assert tensor.name == "x"
    elif hasattr(message, "name"):
        message.name = model
    return message


def _call(world: World, method: str, model: str, auth: str | None) -> grpc.StatusCode:
    with grpc.insecure_channel(world.server.grpc_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        metadata = (("authorization", auth),) if auth is not None else None
        try:
            getattr(stub, method)(_request(method, model), metadata=metadata, timeout=20)
        except grpc.RpcError as err:
            return err.code()
    return grpc.StatusCode.OK


def test_the_descriptor_lists_the_inference_methods() -> None:
    assert {"ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer"} <= set(UNARY)


@pytest.mark.parametrize("method", UNARY)
def test_bad_credentials_are_refused(world: World, method: str) -> None:
    for auth in (None, "Bearer", "Basic abc", "Bearer my_000000000000_forged",
                 f"Bearer {world.revoked}", f"Bearer {world.expired}"):
        code = _call(world, method, world.red.model, auth)
        if method in PUBLIC:
            assert code == grpc.StatusCode.OK, (method, auth)
        else:
            assert code == grpc.StatusCode.UNAUTHENTICATED, (method, auth, code)


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("method", [m for m in UNARY if m.startswith("Model")])
def test_other_tenants_models_do_not_exist(world: World, method: str, role: str) -> None:
    blue_key = f"Bearer {world.blue.keys[role]}"
    theirs = _call(world, method, world.red.model, blue_key)
    missing = _call(world, method, "no-such-model", blue_key)
    assert theirs == missing == grpc.StatusCode.NOT_FOUND
    assert _call(world, method, world.blue.model, blue_key) == grpc.StatusCode.OK
