"""Triton's model configuration through a real server: ``tritonclient.http`` and
``tritonclient.grpc`` (both gRPC transports) read the batch size, tensors and batching settings a
version is served with, following its serving settings and a deployment's; unknown names get
404 / NOT_FOUND."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from tests.integration._serving import WIDTH, grpc_refuses, label_model, on_grpc_transport, register, scale_model
from tests.support.live import LiveServer


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("model-config")
    live = LiveServer.build(tmp / "home", builtin_models=False).start()
    register(live, "alpha", scale_model(tmp / "alpha.onnx", 2.0))
    register(live, "alpha", scale_model(tmp / "alpha-2.onnx", 3.0))
    with live.client() as admin:
        r = admin.patch("/api/v1/models/alpha/versions/2", json={"tags": {"serving": {"batching": False, "timeout_s": 2}}})
        assert r.status_code == 200, r.text
        r = admin.post("/api/v1/deployments", json={
            "name": "front", "routes": [{"model": "alpha", "version": 1}],
            "serving": {"max_batch_size": 8, "max_queue_delay_ms": 0.5, "instances": 2, "max_queue_size": 32,
                        "priority_levels": 3, "priority_queue_policy": {"3": {"max_queue_size": 4, "timeout_s": 0.5}}},
        })
        assert r.status_code == 201, r.text
    try:
        yield live
    finally:
        live.stop()


def _input(config: dict) -> dict:
    (spec,) = config["input"]
    return spec


def test_tritonclient_http_reads_how_each_version_is_served(server: LiveServer) -> None:
    triton = triton_http.InferenceServerClient(server.url.removeprefix("http://"))
    headers = server.headers

    batched = triton.get_model_config("alpha", "1", headers=headers)
    assert (batched["name"], batched["platform"], batched["backend"]) == ("alpha", "onnxruntime_onnx", "onnxruntime")
    assert batched["max_batch_size"] == 64  # the server's default; dims then leave the batch dim out
    assert _input(batched) == {"name": "x", "data_type": "TYPE_FP32", "format": "FORMAT_NONE", "dims": [WIDTH]}
    assert batched["output"] == [{"name": "y", "data_type": "TYPE_FP32", "dims": [WIDTH]}]
    assert batched["dynamic_batching"]["max_queue_delay_microseconds"] == 2000
    assert batched["dynamic_batching"]["default_queue_policy"]["max_queue_size"] == 256
    assert batched["dynamic_batching"]["default_queue_policy"]["allow_timeout_override"] is True
    assert (batched["dynamic_batching"]["priority_levels"], batched["dynamic_batching"]["default_priority_level"]) == (0, 0)
    assert batched["instance_group"] == [{"name": "alpha_0", "kind": "KIND_CPU", "count": 1}]
    assert batched["version_policy"] == {"specific": {"versions": [1]}}

    # version 2 is the latest (the served one) and is tagged not to batch
    unbatched = triton.get_model_config("alpha", headers=headers)
    assert unbatched["version_policy"] == {"specific": {"versions": [2]}}
    assert unbatched["max_batch_size"] == 0 and "dynamic_batching" not in unbatched
    assert _input(unbatched)["dims"] == [-1, WIDTH]
    assert unbatched["parameters"]["modelyard.timeout_s"] == {"string_value": "2"}

    # a deployment: its name, its serving settings over the routed version's
    front = triton.get_model_config("front", headers=headers)
    assert front["name"] == "front" and front["version_policy"] == {"specific": {"versions": [1]}}
    assert front["max_batch_size"] == 8 and front["instance_group"][0]["count"] == 2
    assert front["dynamic_batching"]["max_queue_delay_microseconds"] == 500
    assert front["dynamic_batching"]["default_queue_policy"]["max_queue_size"] == 32
    # three levels declared, no default level: the lowest
    assert (front["dynamic_batching"]["priority_levels"], front["dynamic_batching"]["default_priority_level"]) == (3, 3)
    assert front["dynamic_batching"]["priority_queue_policy"] == {"3": {
        "timeout_action": "REJECT", "default_timeout_microseconds": 500_000, "allow_timeout_override": True,
        "max_queue_size": 4,
    }}
    assert "priority_queue_policy" not in batched["dynamic_batching"]

    for name, version in (("nope", ""), ("alpha", "9")):
        with pytest.raises(InferenceServerException) as missing:
            triton.get_model_config(name, version, headers=headers)
        assert missing.value.status() == "404"
    triton.close()


def test_one_value_per_row_is_dims_1_reshaped(server: LiveServer, tmp_path: Path) -> None:
    """A batched output of shape ``[-1]`` (a class label per row) reads as Triton writes it."""
    assert server.platform is not None
    register(server, "labels", label_model(tmp_path / "labels.onnx"))
    with server.client() as admin:
        config = admin.get("/v2/models/labels/config").json()
    assert config["max_batch_size"] == 64
    assert config["output"] == [{"name": "y", "data_type": "TYPE_INT64", "dims": [1], "reshape": {"shape": []}}]
    assert _input(config)["dims"] == [WIDTH] and "reshape" not in _input(config)


def test_errors_are_the_usual_shape(server: LiveServer) -> None:
    with server.client(key="my_not_a_key") as stranger:
        r = stranger.get("/v2/models/alpha/config")
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthenticated"
    with server.client() as admin:
        r = admin.get("/v2/models/alpha/versions/9/config")
        assert r.status_code == 404 and r.json()["error"]["code"] == "version_not_found"


@pytest.mark.parametrize("transport", ["native", "grpcio"])
def test_tritonclient_grpc_reads_the_same(server: LiveServer, tmp_path: Path, transport: str) -> None:
    with on_grpc_transport(server, tmp_path, transport) as live:
        triton = triton_grpc.InferenceServerClient(live.grpc_url)
        headers = {"authorization": f"Bearer {live.admin_key}"}
        over_grpc = triton.get_model_config("alpha", "1", headers=headers, as_json=True)["config"]
        with live.client() as admin:
            over_rest = admin.get("/v2/models/alpha/versions/1/config").json()
        # protobuf's JSON writes 64-bit integers as strings and leaves out zeros and empties
        assert over_grpc["name"] == over_rest["name"] and over_grpc["max_batch_size"] == over_rest["max_batch_size"]
        assert over_grpc["input"][0]["dims"] == [str(d) for d in over_rest["input"][0]["dims"]]
        assert over_grpc["input"][0]["data_type"] == "TYPE_FP32"
        assert over_grpc["instance_group"][0]["kind"] == "KIND_CPU"
        delay = over_grpc["dynamic_batching"]["max_queue_delay_microseconds"]
        assert int(delay) == over_rest["dynamic_batching"]["max_queue_delay_microseconds"]
        assert over_grpc["parameters"]["modelyard.format"] == {"string_value": "onnx"}
        register(live, f"levels-{transport}", scale_model(tmp_path / "levels.onnx", 2.0),
                 config={"serving": {"priority_levels": 2, "default_priority_level": 1,
                                     "priority_queue_policy": {"2": {"max_queue_size": 3}}}})
        levels = triton.get_model_config(f"levels-{transport}", headers=headers).config.dynamic_batching
        assert (levels.priority_levels, levels.default_priority_level) == (2, 1)  # the message's uint64 fields
        assert levels.priority_queue_policy[2].max_queue_size == 3  # a map of uint64 levels
        grpc_refuses(lambda: triton.get_model_config("nope", headers=headers), lambda: triton.get_model_config("alpha"))
        triton.close()


def test_a_config_sent_with_a_load_sets_how_the_model_is_served(server: LiveServer, tmp_path: Path) -> None:
    """``load_model(name, config=...)`` (Triton's override): what ``get_model_config`` returned,
    changed and sent back, becomes the model's serving settings; over HTTP and gRPC, field names
    as protobuf's JSON writes them or in camelCase. What cannot be honoured is refused with its
    field and changes nothing; a key that may not change models gets 403."""
    register(server, "tuned", scale_model(tmp_path / "tuned.onnx", 2.0))
    triton = triton_http.InferenceServerClient(server.url.removeprefix("http://"))
    headers = server.headers
    config = triton.get_model_config("tuned", headers=headers)
    config["max_batch_size"] = 16
    config["dynamic_batching"]["max_queue_delay_microseconds"] = 750
    config["dynamic_batching"]["priority_levels"] = 2
    config["dynamic_batching"]["priority_queue_policy"] = {"2": {"max_queue_size": 8}}
    config["instance_group"][0]["count"] = 2
    assert config["parameters"]["modelyard.idle_unload_s"] == {"string_value": "0"}
    config["parameters"]["modelyard.idle_unload_s"] = {"string_value": "600"}
    triton.load_model("tuned", headers=headers, config=json.dumps(config))
    now = triton.get_model_config("tuned", headers=headers)
    assert (now["max_batch_size"], now["instance_group"][0]["count"]) == (16, 2)
    assert now["parameters"]["modelyard.idle_unload_s"] == {"string_value": "600"}
    assert now["dynamic_batching"]["max_queue_delay_microseconds"] == 750
    assert now["dynamic_batching"]["priority_queue_policy"]["2"]["max_queue_size"] == 8
    assert triton.is_model_ready("tuned", headers=headers)
    with server.client() as admin:
        tags = admin.get("/api/v1/models/tuned").json()["tags"]
    assert tags["serving"]["max_batch_size"] == 16 and tags["serving"]["instances"] == 2

    for bad, field in [({"sequence_batching": {}}, "config.sequence_batching"),
                       ({"name": "other"}, "config.name"),
                       ({"instance_group": [{"kind": "KIND_GPU", "count": 1}]}, "config.instance_group.0.kind"),
                       ({"dynamic_batching": {"preferred_batch_size": [4]}}, "config.dynamic_batching.preferred_batch_size"),
                       ({"parameters": {"modelyard.idle_unload_s": {"string_value": "soon"}}},
                        "config.parameters.modelyard.idle_unload_s"),
                       ({"max_batch_size": -1}, "config.max_batch_size")]:
        with pytest.raises(InferenceServerException) as refused:
            triton.load_model("tuned", headers=headers, config=json.dumps(bad))
        assert refused.value.status() == "400", (bad, refused.value.message())
    with server.client() as admin:
        r = admin.post("/v2/repository/models/tuned/load", json={"parameters": {"config": "{not json"}})
        assert r.status_code == 400 and r.json()["error"]["details"] == {"field": "config"}
        r = admin.post("/v2/repository/models/tuned/load",
                       json={"parameters": {"config": json.dumps({"max_batch_size": 5000, "dynamic_batching": {}})}})
        assert r.status_code == 422 and r.json()["error"]["details"]["field"] == "max_batch_size", r.text
        assert admin.get("/api/v1/models/tuned").json()["tags"]["serving"]["max_batch_size"] == 16  # unchanged
        r = admin.post("/api/v1/keys", json={"role": "inference"})
        caller = {"Authorization": f"Bearer {r.json()['secret']}"}
        r = admin.post("/v2/repository/models/tuned/load", headers=caller,
                       json={"parameters": {"config": json.dumps({"max_batch_size": 4})}})
        assert r.status_code == 403, r.text
    triton.close()

    grpc_client = triton_grpc.InferenceServerClient(server.grpc_url)
    grpc_headers = {"authorization": f"Bearer {server.admin_key}"}
    grpc_client.load_model("tuned", headers=grpc_headers, config=json.dumps(
        {"maxBatchSize": 4, "dynamicBatching": {"maxQueueDelayMicroseconds": "250"}}))  # camelCase, a 64-bit string
    again = grpc_client.get_model_config("tuned", headers=grpc_headers).config
    assert (again.max_batch_size, again.dynamic_batching.max_queue_delay_microseconds) == (4, 250)
    assert again.instance_group[0].count == 1  # what the configuration leaves out is the server's default
    with pytest.raises(InferenceServerException) as refused:
        grpc_client.load_model("tuned", headers=grpc_headers, config='{"ensemble_scheduling": {}}')
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT" and "ensemble_scheduling" in refused.value.message()
    grpc_client.close()
