"""Shared-memory regions (``core/shared_memory.py``) on real POSIX shared-memory objects: what is
read and written where, the checks on keys, windows and sizes, and who may see which region."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from multiprocessing import shared_memory as mpshm

import numpy as np
import pytest

from modelyard.core.principal import Principal
from modelyard.core.shared_memory import SharedMemory
from modelyard.errors import Conflict, InvalidInput, NotEnabled, NotFound, PermissionDenied
from modelyard.tensors import InferenceRequest, InferenceResponse, RequestedOutput, Tensor, serialize_bytes_elements

A = Principal(key_id="a", tenant_id="t-a", tenant_name="a", role="developer")
B = Principal(key_id="b", tenant_id="t-b", tenant_name="b", role="owner")


@pytest.fixture
def objects() -> Iterator[list[mpshm.SharedMemory]]:
    made: list[mpshm.SharedMemory] = []
    yield made
    for obj in made:
        obj.close()
        obj.unlink()


def _object(made: list[mpshm.SharedMemory], size: int) -> mpshm.SharedMemory:
    obj = mpshm.SharedMemory(f"modelyard-unit-{uuid.uuid4().hex[:12]}", create=True, size=size)
    made.append(obj)
    return obj


def _in_region(name: str, datatype: str, shape: tuple[int, ...], region: str, size: int, offset: int = 0) -> Tensor:
    params = {"shared_memory_region": region, "shared_memory_byte_size": size}
    if offset:
        params["shared_memory_offset"] = offset
    return Tensor(name, datatype, shape, np.empty(0, np.uint8), params)


def test_inputs_are_read_and_outputs_written(objects: list[mpshm.SharedMemory]) -> None:
    obj = _object(objects, 4096)
    x = np.arange(6, dtype=np.int32).reshape(2, 3)
    words = np.array([b"ab", b"cde"], dtype=object)
    obj.buf[100:124] = x.tobytes()
    raw_words = serialize_bytes_elements(words)
    obj.buf[200 : 200 + len(raw_words)] = raw_words
    memory = SharedMemory(enabled=True)
    memory.register(A, "r", obj.name, 64, 1024)  # the region starts 64 bytes into the object
    request = InferenceRequest(
        inputs=[_in_region("x", "INT32", (2, 3), "r", 24, offset=36), _in_region("w", "BYTES", (2,), "r",
                                                                                 len(raw_words), offset=136)],
        outputs=[RequestedOutput("y", {"shared_memory_region": "r", "shared_memory_byte_size": 48,
                                       "shared_memory_offset": 500})],
        shared_memory=True,
    )
    memory.read_inputs(A, request)
    np.testing.assert_array_equal(request.inputs[0].data, x)
    assert request.inputs[1].data.tolist() == [b"ab", b"cde"]
    obj.buf[100:124] = bytes(24)  # a copy was read: the region may be reused at once
    np.testing.assert_array_equal(request.inputs[0].data, x)

    y = np.linspace(0, 1, 6, dtype=np.float64).reshape(2, 3)
    response = InferenceResponse("m", "1", [Tensor.from_array("y", y), Tensor.from_array("z", y)])
    written = memory.write_outputs(A, response, request.outputs)
    assert written.outputs[0].parameters == {
        "shared_memory_region": "r", "shared_memory_offset": 500, "shared_memory_byte_size": 48}
    assert written.outputs[1].parameters == {}  # not asked into a region
    np.testing.assert_array_equal(np.frombuffer(obj.buf[564:612], dtype="<f8").reshape(2, 3), y)


def test_keys_windows_and_names_are_checked(objects: list[mpshm.SharedMemory]) -> None:
    obj = _object(objects, 64)
    memory = SharedMemory(enabled=True)
    for key in ("", "/", "/a/b", "a\0b", "x" * 300, 7, None):
        with pytest.raises(InvalidInput, match="POSIX shared memory object"):
            memory.register(A, "r", key, 0, 8)
    with pytest.raises(InvalidInput, match="past the end"):
        memory.register(A, "r", obj.name, 60, 8)
    with pytest.raises(InvalidInput, match="byte_size must be a whole number >= 1"):
        memory.register(A, "r", obj.name, 0, 0)
    with pytest.raises(InvalidInput, match="offset must be a whole number"):
        memory.register(A, "r", obj.name, -1, 8)
    with pytest.raises(InvalidInput, match="create it first"):
        memory.register(A, "r", f"/modelyard-unit-missing-{uuid.uuid4().hex}", 0, 8)
    assert memory.status(A) == []
    memory.register(A, "r", obj.name.lstrip("/"), 0, 64)  # the leading '/' is optional
    with pytest.raises(Conflict, match="already registered"):
        memory.register(A, "r", obj.name, 0, 64)

    def request(**params: object) -> InferenceRequest:
        t = Tensor("x", "FP32", (2,), np.empty(0, np.uint8), {"shared_memory_region": "r", **params})
        return InferenceRequest([t], shared_memory=True)

    with pytest.raises(InvalidInput, match="needs shared_memory_byte_size"):
        memory.read_inputs(A, request())
    with pytest.raises(InvalidInput, match="do not fit in region 'r'"):
        memory.read_inputs(A, request(shared_memory_byte_size=8, shared_memory_offset=60))
    with pytest.raises(InvalidInput, match="binary data is 4 bytes"):
        memory.read_inputs(A, request(shared_memory_byte_size=4))
    with pytest.raises(InvalidInput, match="shared_memory_offset must be a whole number"):
        memory.read_inputs(A, request(shared_memory_byte_size=8, shared_memory_offset="0"))
    with pytest.raises(NotFound, match="no shared memory region 'r'"):
        memory.read_inputs(B, request(shared_memory_byte_size=8))


def test_regions_are_a_tenants_own(objects: list[mpshm.SharedMemory]) -> None:
    obj, other = _object(objects, 64), _object(objects, 64)
    memory = SharedMemory(enabled=True)
    memory.register(A, "r", obj.name, 0, 64)
    memory.register(A, "again", obj.name, 0, 32)  # the same object twice for one tenant is fine
    with pytest.raises(Conflict, match="another tenant"):
        memory.register(B, "r", obj.name, 0, 64)
    memory.register(B, "r", other.name, 0, 64)  # names are per tenant
    assert [r["key"] for r in memory.status(B)] == [other.name]
    memory.unregister(B)
    assert memory.status(B) == [] and len(memory.status(A)) == 2
    memory.unregister(A, "r")
    with pytest.raises(Conflict, match="another tenant"):  # A still holds it through "again"
        memory.register(B, "x", obj.name, 0, 64)
    memory.unregister(A, "again")
    with pytest.raises(NotFound, match="no shared memory region 'gone'"):
        memory.unregister(A, "gone")
    memory.register(B, "x", obj.name, 0, 64)  # free once A let go of it
    with pytest.raises(PermissionDenied):
        memory.status(Principal(key_id="n", tenant_id="t-a", tenant_name="a", role="nobody"))
    memory.close()
    assert memory.status(B) == []


def test_off_unless_enabled(objects: list[mpshm.SharedMemory]) -> None:
    obj = _object(objects, 64)
    memory = SharedMemory(enabled=False)
    with pytest.raises(NotEnabled, match="MODELYARD_SHARED_MEMORY=true"):
        memory.register(A, "r", obj.name, 0, 64)
    t = Tensor("x", "FP32", (2,), np.empty(0, np.uint8), {"shared_memory_region": "r", "shared_memory_byte_size": 8})
    with pytest.raises(NotEnabled, match="MODELYARD_SHARED_MEMORY=true"):
        memory.read_inputs(A, InferenceRequest([t], shared_memory=True))
    assert memory.status(A) == [] and memory.cuda_status(A) == []
    with pytest.raises(NotEnabled, match="host memory"):
        memory.cuda_register(A, "g")
