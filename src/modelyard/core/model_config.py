"""A version's serving configuration in the shape of Triton's model configuration
(``GET /v2/models/{m}[/versions/{v}]/config``, gRPC ``ModelConfig``), so ``tritonclient``'s
``get_model_config`` and code written against Triton read the batch size, tensors and batching
settings a version is served with.

It describes, it does not configure: ModelYard's settings come from the serving settings
(defaults, the model's and the version's ``serving`` tag, the version's config, a deployment's;
``docs/serving.md``). How they map:

* ``max_batch_size``: the batch size in rows when the version is batched, and then ``dims`` leave
  out the first (batch) dimension, as in Triton (one value per row: ``[1]`` reshaped to ``[]``);
  0 when it is not batched, with full ``dims`` (``-1`` for a dynamic dimension);
* ``dynamic_batching`` (batched versions only): ``max_queue_delay_microseconds``, the
  ``priority_levels`` and ``default_priority_level`` (0 and 0 when none are declared), each level's
  own queue policy (``priority_queue_policy``, for the levels that have one), and a default
  queue policy with ``max_queue_size`` and the request timeout (``default_timeout_microseconds``,
  0 for none; a request past it is refused, ``REJECT``);
* ``instance_group``: one group of ``KIND_CPU`` with ``count`` = the version's instances;
* ``version_policy``: the one version described;
* ``parameters``: ModelYard's own settings as strings (``modelyard.format``,
  ``modelyard.isolation``, ``modelyard.idle_unload_s``, ``modelyard.max_queue_size``, ``modelyard.timeout_s``).
"""

from __future__ import annotations

from typing import Any

from modelyard.engine.batcher import batching_default
from modelyard.engine.manager import ServingOptions
from modelyard.engine.queue_policy import level_policy
from modelyard.tensors import TensorSpec

__all__ = ["triton_config", "triton_platform"]

#: Triton's name of each ModelYard format; other formats keep their own name
_PLATFORMS = {"onnx": ("onnxruntime_onnx", "onnxruntime")}


def triton_platform(fmt: str) -> str:
    """The ``platform`` Triton would report for a version of format ``fmt``."""
    return _PLATFORMS.get(fmt, (fmt, fmt))[0]


def _data_type(datatype: str) -> str:
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


def _tensor(spec: TensorSpec, batched: bool) -> dict[str, Any]:
    """A tensor's name, type and dims; a batched tensor of one dimension (one value per row) has
    dims ``[1]`` reshaped to ``[]``, as Triton writes it (its dims are never empty)."""
    dims = list(spec.shape[1:] if batched else spec.shape)
    described: dict[str, Any] = {"name": spec.name, "data_type": _data_type(spec.datatype), "dims": dims or [1]}
    if not dims:
        described["reshape"] = {"shape": []}
    return described


def _queue_policy(timeout_us: int, max_queue_size: int) -> dict[str, Any]:
    """Triton's ``ModelQueuePolicy``: requests past their deadline are refused (``REJECT``); a
    request's ``timeout`` parameter may shorten it (``core/scheduling.py``); ``max_queue_size``
    0 for a level without a bound of its own (the version's bound still holds)."""
    return {
        "timeout_action": "REJECT",
        "default_timeout_microseconds": timeout_us,
        "allow_timeout_override": True,
        "max_queue_size": max_queue_size,
    }


def triton_config(
    name: str, version: int, fmt: str, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...],
    options: ServingOptions,
) -> dict[str, Any]:
    """The model configuration (Triton's JSON form) of version ``version`` served as ``name``
    (a model's or a deployment's name) with ``options``; see the module for the mapping."""
    batched = options.batching if options.batching is not None else batching_default(list(inputs))
    platform, backend = _PLATFORMS.get(fmt, (fmt, fmt))
    timeout_us = int(round(options.timeout_s * 1e6)) if options.timeout_s else 0
    config: dict[str, Any] = {
        "name": name,
        "platform": platform,
        "backend": backend,
        "version_policy": {"specific": {"versions": [version]}},
        "max_batch_size": options.max_batch_size if batched else 0,
        "input": [{**_tensor(s, batched), "format": "FORMAT_NONE"} for s in inputs],
        "output": [_tensor(s, batched) for s in outputs],
        "instance_group": [{"name": f"{name}_0", "kind": "KIND_CPU", "count": options.instances}],
        "response_cache": {"enable": options.response_cache},
        "parameters": {
            "modelyard.format": {"string_value": fmt},
            "modelyard.isolation": {"string_value": options.isolation},
            "modelyard.idle_unload_s": {"string_value": f"{options.idle_unload_s:g}"},
            "modelyard.max_queue_size": {"string_value": str(options.max_queue_size)},
            "modelyard.timeout_s": {"string_value": "" if options.timeout_s is None else f"{options.timeout_s:g}"},
        },
    }
    if batched:
        config["dynamic_batching"] = {
            "preferred_batch_size": [],
            "max_queue_delay_microseconds": int(round(options.max_queue_delay_ms * 1000)),
            "priority_levels": options.priority_levels,
            "default_priority_level": options.default_priority,
            "default_queue_policy": _queue_policy(timeout_us, options.max_queue_size),
        }
        if options.priority_queue_policy:
            levels = {}
            for level in options.priority_queue_policy:
                limit, level_timeout_s = level_policy(options.priority_queue_policy, int(level))
                level_us = timeout_us if level_timeout_s is None else int(round(level_timeout_s * 1e6))
                levels[str(level)] = _queue_policy(level_us, limit or 0)
            config["dynamic_batching"]["priority_queue_policy"] = levels
    return config
