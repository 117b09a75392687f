"""System shared memory for inference tensors: Triton's ``system_shared_memory`` extension.

A client on the server's own machine puts an input's bytes in a POSIX shared-memory object
(``shm_open``; ``tritonclient.utils.shared_memory`` makes one), registers a window of it as a named
*region* (``POST /v2/systemsharedmemory/region/{name}/register`` ``{"key", "offset",
"byte_size"}``, gRPC ``SystemSharedMemoryRegister``), and then names the region in an inference
request instead of sending the bytes: an input's parameters ``shared_memory_region``,
``shared_memory_byte_size`` and optionally ``shared_memory_offset`` (within the region). A
requested output with the same parameters is written into its region instead of the answer, which
then carries the output's name, datatype, shape and those parameters (``shared_memory_byte_size``
the bytes written). Tensors in a region are laid out as in the binary extension: little-endian
row-major numbers, BYTES elements each behind a 4-byte length.

What it saves is the request's and the answer's bytes through HTTP or gRPC: inputs are copied
once out of the region as the request is read (so the client may reuse the region once the call
is answered, and nothing is mapped while a batch computes), outputs once into it.

Off by default: a region lets the server read and write a shared-memory object its caller names,
with the server's own rights on the machine. ``MODELYARD_SHARED_MEMORY=true`` turns it on. Then:

* regions belong to a tenant (names are per tenant; the status lists only the caller's), and
  anyone who may infer there may register, use and unregister them;
* one object (``key``) is registered by one tenant at a time: another tenant's registration of a
  key in use is refused (409), so no tenant reads another's tensors through the server;
* an object is opened, never created or resized; a window past its end is refused, and every read
  and write checks the object's size first (a client that shrinks an object it registered gets an
  error, not a crash);
* regions live in the server process that registered them (shared memory is one machine's):
  in a cluster, call the server that holds them.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelyard.core.principal import Principal
from modelyard.errors import Conflict, InvalidInput, NotEnabled, NotFound
from modelyard.tensors import (
    InferenceRequest,
    InferenceResponse,
    RequestedOutput,
    Tensor,
    decode_raw_tensor,
    serialize_bytes_elements,
)

try:  # the stdlib's own binding of shm_open (multiprocessing.shared_memory uses it)
    import _posixshmem
except ImportError:  # pragma: no cover - Windows
    _posixshmem = None

__all__ = ["SharedMemory", "Region", "REGION", "OFFSET", "BYTE_SIZE", "raw_bytes"]

#: the tensor parameters that name a region (Triton's names)
REGION = "shared_memory_region"
OFFSET = "shared_memory_offset"
BYTE_SIZE = "shared_memory_byte_size"
#: regions a tenant may hold at once
MAX_REGIONS_PER_TENANT = 128
_MAX_KEY = 255
_HOW_TO_ENABLE = "system shared memory is off on this server; start it with MODELYARD_SHARED_MEMORY=true"


class Region:
    """A registered window ``[offset, offset + byte_size)`` of the shared-memory object ``key``."""

    __slots__ = ("name", "key", "offset", "byte_size", "tenant_id", "_fd", "_map")

    def __init__(self, name: str, key: str, offset: int, byte_size: int, tenant_id: str) -> None:
        self.name, self.key, self.offset, self.byte_size, self.tenant_id = name, key, offset, byte_size, tenant_id
        self._fd = _open(key)
        try:
            size = os.fstat(self._fd).st_size
            if offset + byte_size > size:
                raise InvalidInput(
                    f"region {name!r}: offset {offset} + byte_size {byte_size} is past the end of "
                    f"shared memory object {key!r} ({size} bytes)"
                )
            self._map = mmap.mmap(self._fd, offset + byte_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(self._fd)
            raise

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "key": self.key, "offset": self.offset, "byte_size": self.byte_size}

    def read(self, offset: int, size: int, what: str) -> bytes:
        """A copy of ``size`` bytes at ``offset`` within the region (``offset + size`` at most
        ``byte_size``)."""
        start = self._window(offset, size, what)
        return self._map[start : start + size]

    def write(self, offset: int, data: bytes | memoryview, what: str) -> None:
        start = self._window(offset, len(data), what)
        self._map[start : start + len(data)] = data

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)

    def _window(self, offset: int, size: int, what: str) -> int:
        """Where ``size`` bytes at ``offset`` (within the region: checked by the caller) start
        in the object, once the object is seen to still hold them."""
        start = self.offset + offset
        if os.fstat(self._fd).st_size < start + size:  # shrunk since it was registered
            raise InvalidInput(
                f"{what}: shared memory object {self.key!r} of region {self.name!r} is smaller than "
                "when it was registered; register the region again"
            )
        return start


def _open(key: str) -> int:
    if _posixshmem is None:  # pragma: no cover - Windows
        raise NotEnabled("system shared memory needs POSIX shared memory (Linux, macOS)")
    try:
        return int(_posixshmem.shm_open(_canonical(key), os.O_RDWR, mode=0o600))
    except FileNotFoundError:
        raise InvalidInput(
            f"no shared memory object {key!r} exists on the server's machine; create it first "
            "(e.g. tritonclient.utils.shared_memory.create_shared_memory_region)"
        ) from None
    except OSError as exc:
        raise InvalidInput(f"shared memory object {key!r} cannot be opened: {exc.strerror}") from None


def _whole(value: Any, what: str, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidInput(f"{what} must be a whole number >= {minimum}, got {value!r}")
    return value


def raw_bytes(t: Tensor) -> bytes | memoryview:
    """``t``'s data as it lies in a region: little-endian row-major (a view of the array when it
    already is, so it is copied once, into the region), or length-prefixed BYTES."""
    if t.datatype == "BYTES":
        return serialize_bytes_elements(t.data)
    return memoryview(np.ascontiguousarray(t.data, dtype=t.data.dtype.newbyteorder("<"))).cast("B")


@dataclass
class _Window:
    """Where one tensor lies: a region, an offset in it, a size."""

    region: Region
    offset: int
    byte_size: int
    parameters: dict[str, Any] = field(default_factory=dict)


class SharedMemory:
    """The registered regions of every tenant (see the module). ``enabled`` is the setting."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._regions: dict[str, dict[str, Region]] = {}  # tenant -> name -> region
        self._keys: dict[str, str] = {}  # key -> tenant holding it

    # -- the extension's calls ---------------------------------------------------------------
    def status(self, principal: Principal, name: str | None = None) -> list[dict[str, Any]]:
        """The caller's regions (one, by name: 404 when it has none of that name)."""
        principal.require("infer")
        regions = self._regions.get(principal.tenant_id, {})
        if name is None:
            return [r.status() for r in regions.values()]
        return [self._region(principal, name, "region").status()]

    def register(self, principal: Principal, name: str, key: Any, offset: Any, byte_size: Any) -> None:
        principal.require("infer")
        if not self.enabled:
            raise NotEnabled(_HOW_TO_ENABLE)
        if not isinstance(name, str) or not name or len(name) > _MAX_KEY:
            raise InvalidInput(f"a region's name must be 1-{_MAX_KEY} characters")
        if not isinstance(key, str) or not key.lstrip("/") or "/" in key.lstrip("/") or len(key) > _MAX_KEY or "\0" in key:
            raise InvalidInput(
                f"key must name a POSIX shared memory object ('/name' or 'name', no other '/'), got {key!r}"
            )
        offset = _whole(offset, "offset")
        byte_size = _whole(byte_size, "byte_size", minimum=1)
        regions = self._regions.setdefault(principal.tenant_id, {})
        if name in regions:
            raise Conflict(f"region {name!r} is already registered; unregister it first")
        if len(regions) >= MAX_REGIONS_PER_TENANT:
            raise InvalidInput(f"a tenant may hold {MAX_REGIONS_PER_TENANT} regions at most; unregister some")
        holder = self._keys.get(_canonical(key))
        if holder is not None and holder != principal.tenant_id:
            raise Conflict(f"shared memory object {key!r} is registered by another tenant")
        regions[name] = Region(name, key, offset, byte_size, principal.tenant_id)
        self._keys[_canonical(key)] = principal.tenant_id

    def unregister(self, principal: Principal, name: str | None = None) -> None:
        """Unregister the caller's region ``name`` (404 when it has none of that name), or every
        one of them when ``None``."""
        principal.require("infer")
        regions = self._regions.get(principal.tenant_id, {})
        if name is not None:
            self._region(principal, name, "unregister")
        for gone in list(regions) if name is None else [name]:
            self._forget(regions.pop(gone))

    def cuda_status(self, principal: Principal, name: str | None = None) -> list[dict[str, Any]]:
        """CUDA shared memory: none (tensors stay in host memory here); 404 for a named region."""
        principal.require("infer")
        if name is not None:
            raise NotFound(f"no CUDA shared memory region {name!r}: this server registers none")
        return []

    def cuda_register(self, principal: Principal, name: str) -> None:
        principal.require("infer")
        raise NotEnabled(
            f"CUDA shared memory region {name!r}: this server keeps tensors in host memory; "
            "use system shared memory (/v2/systemsharedmemory) instead"
        )

    def close(self) -> None:
        """Unmap every region (the server stops)."""
        for regions in self._regions.values():
            for region in regions.values():
                region.close()
        self._regions.clear()
        self._keys.clear()

    # -- inference ---------------------------------------------------------------------------
    def read_inputs(self, principal: Principal, request: InferenceRequest) -> None:
        """Replace each input that names a region with its tensor read from it, and check that
        the regions the requested outputs name exist and hold their windows (before anything
        runs). ``InvalidInput`` for a missing region, a window past its end, or bytes that do
        not make the input's shape."""
        inputs = request.inputs
        for i, t in enumerate(inputs):
            if REGION in t.parameters:
                what = f"input {t.name!r}"
                window = self._window(principal, t.parameters, what)
                data = window.region.read(window.offset, window.byte_size, what)
                array = decode_raw_tensor(data, datatype=t.datatype, shape=t.shape, name=what)
                inputs[i] = Tensor(t.name, t.datatype, t.shape, array, window.parameters)
        for o in request.outputs or ():
            if REGION in o.parameters:
                self._window(principal, o.parameters, f"requested output {o.name!r}")

    def write_outputs(
        self, principal: Principal, response: InferenceResponse, requested: list[RequestedOutput] | None
    ) -> InferenceResponse:
        """Write each output whose request names a region into it; in the response that output
        keeps its name, datatype and shape, its parameters say where it went (``data`` is not
        sent). ``InvalidInput`` when an output needs more bytes than its window holds."""
        wanted = {o.name: o.parameters for o in requested or () if REGION in o.parameters}
        if not wanted:
            return response
        outputs = []
        for t in response.outputs:
            params = wanted.get(t.name)
            if params is not None:
                what = f"output {t.name!r}"
                window = self._window(principal, params, what)
                data = raw_bytes(t)
                if len(data) > window.byte_size:
                    raise InvalidInput(
                        f"{what} is {len(data)} bytes but its shared_memory_byte_size is {window.byte_size}"
                    )
                window.region.write(window.offset, data, what)
                t = Tensor(t.name, t.datatype, t.shape, t.data, {**window.parameters, BYTE_SIZE: len(data)})
            outputs.append(t)
        return InferenceResponse(response.model_name, response.model_version, outputs, response.id, response.parameters)

    # -- helpers -----------------------------------------------------------------------------
    def _region(self, principal: Principal, name: str, what: str) -> Region:
        region = self._regions.get(principal.tenant_id, {}).get(name)
        if region is None:
            if not self.enabled:
                raise NotEnabled(_HOW_TO_ENABLE)
            raise NotFound(f"{what}: no shared memory region {name!r} is registered; register it first")
        return region

    def _window(self, principal: Principal, params: dict[str, Any], what: str) -> _Window:
        name = params[REGION]
        if not isinstance(name, str):
            raise InvalidInput(f"{what}: {REGION} must be a region's name, got {name!r}")
        if BYTE_SIZE not in params:
            raise InvalidInput(f"{what}: {REGION} needs {BYTE_SIZE} too")
        size = _whole(params[BYTE_SIZE], f"{what}: {BYTE_SIZE}")
        offset = _whole(params.get(OFFSET, 0), f"{what}: {OFFSET}")
        region = self._region(principal, name, what)
        if offset + size > region.byte_size:
            raise InvalidInput(
                f"{what}: {size} bytes at offset {offset} do not fit in region {name!r} ({region.byte_size} bytes)"
            )
        kept = {k: params[k] for k in (REGION, OFFSET) if k in params}
        return _Window(region, offset, size, {**kept, BYTE_SIZE: size})

    def _forget(self, region: Region) -> None:
        """Unmap an unregistered region; its object is free for other tenants once none of its
        tenant's regions maps it."""
        key = _canonical(region.key)
        if not any(_canonical(r.key) == key for r in self._regions.get(region.tenant_id, {}).values()):
            del self._keys[key]
        region.close()


def _canonical(key: str) -> str:
    """The object's name as ``shm_open`` takes it: ``/name``."""
    return "/" + key.lstrip("/")
