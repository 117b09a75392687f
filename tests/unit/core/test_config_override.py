"""A Triton configuration read as serving settings (``core/config_override.py``): what
``triton_config`` writes reads back as the settings it was written from; what cannot be
honoured is refused with its field."""

from __future__ import annotations

import json

import pytest

from modelyard.core.config_override import serving_from_triton
from modelyard.core.model_config import triton_config
from modelyard.engine.manager import ServingOptions
from modelyard.errors import BadRequest, ValidationFailed
from modelyard.tensors import TensorSpec

INPUTS = (TensorSpec("x", "FP32", (-1, 4)),)
OUTPUTS = (TensorSpec("y", "FP32", (-1, 4)),)


@pytest.mark.parametrize("options", [
    ServingOptions(),
    ServingOptions(max_batch_size=16, max_queue_delay_ms=0.75, max_queue_size=32, instances=2, timeout_s=2.5,
                   response_cache=True, isolation="process", idle_unload_s=600),
    ServingOptions(priority_levels=3, default_priority_level=1,
                   priority_queue_policy={"3": {"max_queue_size": 4, "timeout_s": 0.5}}),
    ServingOptions(batching=False, instances=3),
])
def test_what_triton_config_writes_reads_back_as_the_same_settings(options: ServingOptions) -> None:
    written = json.dumps(triton_config("m", 1, "onnx", INPUTS, OUTPUTS, options))
    read = ServingOptions().merged(serving_from_triton(written, "m"))
    expected = options.to_dict()
    if options.batching is None:
        expected["batching"] = True  # written as batched (the inputs' first dim is dynamic), read as such
    got = read.to_dict()
    if not options.batching and options.batching is not None:
        got["max_batch_size"] = expected["max_batch_size"]  # an unbatched config has no batch size to read
        got["max_queue_delay_ms"] = expected["max_queue_delay_ms"]
    if options.priority_queue_policy:  # read back with the level's deadline in whole microseconds
        got["priority_queue_policy"] = {k: dict(v) for k, v in got["priority_queue_policy"].items()}
    assert got == expected


def test_camel_case_names_and_64_bit_strings_read_as_protobuf_writes_them() -> None:
    text = json.dumps({"maxBatchSize": 8, "dynamicBatching": {"maxQueueDelayMicroseconds": "500",
                       "defaultQueuePolicy": {"maxQueueSize": 10, "defaultTimeoutMicroseconds": "2000000"}},
                       "instanceGroup": [{"count": 1, "kind": "KIND_CPU"}, {"count": 2}]})
    assert serving_from_triton(text, "m") == {
        "batching": True, "max_batch_size": 8, "max_queue_delay_ms": 0.5, "max_queue_size": 10, "timeout_s": 2.0,
        "instances": 3,
    }
    assert serving_from_triton('{"max_batch_size": 8}', "m") == {"batching": False, "max_batch_size": 8}  # no dynamic batching
    assert serving_from_triton('{"max_batch_size": 0, "dynamic_batching": {}}', "m") == {"batching": False}
    assert serving_from_triton({"max_batch_size": 4}, "m") == {"batching": False, "max_batch_size": 4}  # an object


@pytest.mark.parametrize("config, field", [
    ("[]", "config"), ("{", "config"), (None, "config"),
    ('{"sequence_batching": {}}', "config.sequence_batching"),
    ('{"name": "other"}', "config.name"),
    ('{"max_batch_size": "8"}', "config.max_batch_size"),
    ('{"dynamic_batching": {"preserve_ordering": true, "custom": 1}}', "config.dynamic_batching.custom"),
    ('{"dynamic_batching": {"preferred_batch_size": [4, 8]}}', "config.dynamic_batching.preferred_batch_size"),
    ('{"dynamic_batching": {"default_queue_policy": {"timeout_action": "DELAY"}}}',
     "config.dynamic_batching.default_queue_policy.timeout_action"),
    ('{"dynamic_batching": {"priority_queue_policy": {"2": {"allow_timeout_override": true}}}}',
     "config.dynamic_batching.priority_queue_policy.2"),
    ('{"instance_group": [{"kind": "KIND_GPU"}]}', "config.instance_group.0.kind"),
    ('{"instance_group": [{"count": -1}]}', "config.instance_group.0.count"),
    ('{"instance_group": []}', "config.instance_group"),
    ('{"response_cache": {"enable": "yes"}}', "config.response_cache.enable"),
    ('{"parameters": {"modelyard.isolation": "process"}}', "config.parameters.modelyard.isolation"),
    ('{"parameters": {"modelyard.idle_unload_s": 600}}', "config.parameters.modelyard.idle_unload_s"),
    ('{"parameters": {"modelyard.idle_unload_s": {"string_value": "soon"}}}',
     "config.parameters.modelyard.idle_unload_s"),
])
def test_what_cannot_be_honoured_is_refused_with_its_field(config: str | None, field: str) -> None:
    with pytest.raises(BadRequest) as info:
        serving_from_triton(config, "m")
    assert info.value.details == {"field": field}


def test_an_idle_time_out_of_range_is_a_bad_setting() -> None:
    with pytest.raises(ValidationFailed) as info:
        serving_from_triton('{"parameters": {"modelyard.idle_unload_s": {"string_value": "-5"}}}', "m")
    assert info.value.details == {"field": "idle_unload_s"}
