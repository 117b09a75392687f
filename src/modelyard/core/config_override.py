"""A Triton model configuration sent with a load (``tritonclient``'s ``load_model(name,
config=...)``, REST and gRPC) read as ModelYard serving settings: the inverse of
``core/model_config.py``, so that what ``get_model_config`` returns can be changed and sent back.

What it sets, the model's ``serving`` tag (all its versions; docs/serving.md, "Serving settings"):

* ``max_batch_size``: 0 turns batching off; otherwise the batch size, batched dynamically when
  the configuration has ``dynamic_batching`` and one request at a time when it has none, as in
  Triton;
* ``dynamic_batching``: ``max_queue_delay_microseconds``, ``priority_levels``,
  ``default_priority_level``, ``default_queue_policy`` (``max_queue_size``,
  ``default_timeout_microseconds``; 0 leaves the server's default) and ``priority_queue_policy``
  (per level, the same two);
* ``instance_group``: the sum of the groups' ``count`` (``KIND_CPU`` or ``KIND_AUTO``);
* ``response_cache.enable``;
* ``parameters``: ``modelyard.isolation`` (``thread`` or ``process``), ``modelyard.idle_unload_s``
  (seconds without a request before the version is unloaded, 0: never); ``modelyard.max_queue_size``
  and ``modelyard.timeout_s`` only mirror Triton's own fields above, which are read instead, and
  other parameters are a backend's: both are left alone.

Field names are read as protobuf's JSON writes them or as Triton's documentation does:
``max_batch_size`` or ``maxBatchSize``; 64-bit numbers as numbers or strings.

What describes the model rather than how it is served (``name``, which must be the model's,
``platform``, ``backend``, ``version_policy``, ``input``, ``output``) is read from the version's
artifact and ignored here. What ModelYard cannot honour (sequence batching, ensembles, GPU
instances, preferred batch sizes, ``DELAY`` on timeout, ...) is refused, each with its field:
a load never half-applies a configuration. The settings are then checked as any others
(``parse_serving``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from modelyard.engine.manager import parse_serving
from modelyard.errors import BadRequest

__all__ = ["serving_from_triton"]

#: fields that describe the model, read from its artifact: accepted and ignored
_DESCRIPTIVE = {"name", "platform", "backend", "version_policy", "input", "output", "runtime"}
_SERVING = {"max_batch_size", "dynamic_batching", "instance_group", "response_cache", "parameters"}
_QUEUE = {"timeout_action", "default_timeout_microseconds", "allow_timeout_override", "max_queue_size"}
_BATCHING = {
    "preferred_batch_size", "max_queue_delay_microseconds", "preserve_ordering", "priority_levels",
    "default_priority_level", "default_queue_policy", "priority_queue_policy",
}
_ISOLATION = "modelyard.isolation"
_IDLE_UNLOAD = "modelyard.idle_unload_s"
_CAMEL = re.compile(r"^[a-z]+(?:[A-Z][a-z0-9]*)+$")


def serving_from_triton(text: Any, model_name: str) -> dict[str, Any]:
    """The serving settings the Triton configuration ``text`` (JSON text, as ``load_model`` sends
    it, or the object itself) asks for ``model_name``; :class:`BadRequest` names what cannot be honoured, and the settings'
    own checks (422) what is out of range."""
    try:  # (Triton's clients send it as text; a JSON object in a REST body is taken as it is)
        config = json.loads(text) if isinstance(text, (str, bytes)) else text
    except ValueError as exc:
        raise _refused("config", f"the model configuration is not JSON: {exc}") from None
    if not isinstance(config, dict):
        raise _refused("config", "the model configuration must be a JSON object, as get_model_config returns it")
    config = _snake(config)
    for name in config:
        if name not in _DESCRIPTIVE | _SERVING:
            raise _refused(name, f"ModelYard cannot serve with the model configuration's {name!r}; "
                                 f"it sets {', '.join(sorted(_SERVING))}")
    if config.get("name") not in (None, "", model_name):
        raise _refused("name", f"the configuration names model {config['name']!r}, not {model_name!r}")
    serving: dict[str, Any] = {}
    batch = config.get("max_batch_size")
    if batch is not None:
        if type(batch) is not int or batch < 0:
            raise _refused("max_batch_size", f"max_batch_size must be a whole number (0: no batching), not {batch!r}")
        serving["batching"] = bool(batch) and "dynamic_batching" in config
        if batch:
            serving["max_batch_size"] = batch
    if "dynamic_batching" in config:
        serving.update(_batching(_object(config["dynamic_batching"], "dynamic_batching")))
    if "instance_group" in config:
        serving["instances"] = _instances(config["instance_group"])
    if "response_cache" in config:
        enable = _object(config["response_cache"], "response_cache").get("enable", False)
        if not isinstance(enable, bool):
            raise _refused("response_cache.enable", f"response_cache.enable must be true or false, not {enable!r}")
        serving["response_cache"] = enable
    parameters = _object(config.get("parameters", {}), "parameters")
    isolation = _parameter(parameters, _ISOLATION, '{"string_value": "thread"} or {"string_value": "process"}')
    if isolation:
        serving["isolation"] = isolation
    idle = _parameter(parameters, _IDLE_UNLOAD, 'a number of seconds as text, {"string_value": "600"} (0: never)')
    if idle:
        try:
            serving["idle_unload_s"] = float(idle)
        except ValueError:
            raise _refused(f"parameters.{_IDLE_UNLOAD}", f'parameters.{_IDLE_UNLOAD} must be a number of seconds '
                                                        f'as text, {{"string_value": "600"}}, not {idle!r}') from None
    return parse_serving(serving, where="config")


def _parameter(parameters: Mapping[str, Any], name: str, expected: str) -> str | None:
    """The ``string_value`` of parameter ``name`` (``None`` when it is not there)."""
    value = parameters.get(name)
    if value is None:
        return None
    text = value.get("string_value") if isinstance(value, Mapping) else None
    if not isinstance(text, str):
        raise _refused(f"parameters.{name}", f"parameters.{name} must be {expected}")
    return text


def _snake(value: Any) -> Any:
    """``value`` with protobuf's lowerCamelCase field names as their proto names (map keys, such
    as priority levels and parameter names, are not camelCase words and stay as they are)."""
    if isinstance(value, dict):
        return {re.sub(r"([A-Z])", r"_\1", k).lower() if isinstance(k, str) and _CAMEL.match(k) else k: _snake(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_snake(v) for v in value]
    return value


def _batching(dynamic: Mapping[str, Any]) -> dict[str, Any]:
    for name in dynamic:
        if name not in _BATCHING:
            raise _refused(f"dynamic_batching.{name}", f"ModelYard cannot batch with dynamic_batching.{name}")
    if dynamic.get("preferred_batch_size"):
        raise _refused("dynamic_batching.preferred_batch_size",
                       "preferred batch sizes are not offered: a batch starts when it is full or has waited "
                       "max_queue_delay_microseconds")
    serving: dict[str, Any] = {}
    delay = dynamic.get("max_queue_delay_microseconds")
    if delay is not None:
        serving["max_queue_delay_ms"] = _whole(delay, "dynamic_batching.max_queue_delay_microseconds") / 1000
    for name in ("priority_levels", "default_priority_level"):
        if name in dynamic:
            serving[name] = _whole(dynamic[name], f"dynamic_batching.{name}")
    if "default_queue_policy" in dynamic:
        serving.update(_queue(dynamic["default_queue_policy"], "dynamic_batching.default_queue_policy"))
    levels = dynamic.get("priority_queue_policy")
    if levels:
        policies = {}
        for level, policy in _object(levels, "dynamic_batching.priority_queue_policy").items():
            where = f"dynamic_batching.priority_queue_policy.{level}"
            rules = _queue(policy, where)
            if not rules:
                raise _refused(where, f"{where} sets neither max_queue_size nor default_timeout_microseconds")
            policies[str(level)] = rules
        serving["priority_queue_policy"] = policies
    return serving


def _queue(policy: Any, where: str) -> dict[str, Any]:
    """A Triton ``ModelQueuePolicy`` as ``max_queue_size`` and ``timeout_s`` (0 sets neither)."""
    rules = _object(policy, where)
    for name in rules:
        if name not in _QUEUE:
            raise _refused(f"{where}.{name}", f"{where} has no setting {name!r}")
    if rules.get("timeout_action", "REJECT") not in ("REJECT", 0):
        raise _refused(f"{where}.timeout_action", "a request past its deadline is refused (REJECT); DELAY is not offered")
    out: dict[str, Any] = {}
    size = _whole(rules.get("max_queue_size", 0), f"{where}.max_queue_size")
    if size:
        out["max_queue_size"] = size
    timeout_us = _whole(rules.get("default_timeout_microseconds", 0), f"{where}.default_timeout_microseconds")
    if timeout_us:
        out["timeout_s"] = timeout_us / 1e6
    return out


def _instances(groups: Any) -> int:
    if not isinstance(groups, list) or not groups:
        raise _refused("instance_group", "instance_group must be a list of groups, e.g. [{\"count\": 2, \"kind\": \"KIND_CPU\"}]")
    total = 0
    for i, group in enumerate(groups):
        where = f"instance_group.{i}"
        group = _object(group, where)
        if group.get("kind", "KIND_AUTO") not in ("KIND_CPU", "KIND_AUTO"):
            raise _refused(f"{where}.kind", f"this server runs models on its CPUs: {group['kind']!r} is not offered")
        if group.get("gpus"):
            raise _refused(f"{where}.gpus", "this server runs models on its CPUs: no GPUs to name")
        total += _whole(group.get("count", 1), f"{where}.count")
    return total


def _object(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _refused(where, f"{where} must be an object")
    return value


def _whole(value: Any, where: str) -> int:
    """A whole number as protobuf's JSON writes 64-bit ones (a string) or as a number."""
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    if type(value) is int and value >= 0:
        return value
    raise _refused(where, f"{where} must be a whole number, not {value!r}")


def _refused(field: str, message: str) -> BadRequest:
    return BadRequest(message, details={"field": f"config.{field}" if field != "config" else "config"})
