"""The ``modelyard`` CLI against a real server: models commands, predict, health, whoami, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import Result
from sklearn.datasets import load_digits
from typer.testing import CliRunner

from modelyard.cli.main import app
from tests.integration.test_sdk import reference_digits, tiny_onnx
from tests.support.live import LiveServer, free_port

BAD_KEY = "my_000000000000_wrongwrongwrongwrongwrong"


def run(server_url: str, key: str, *args: str, input: str | None = None) -> Result:
    env = {"MODELYARD_URL": server_url, "MODELYARD_API_KEY": key, "COLUMNS": "160"}
    return CliRunner().invoke(app, list(args), env=env, input=input)


def cli(server: LiveServer, *args: str, input: str | None = None) -> Result:
    return run(server.url, server.admin_key, *args, input=input)


def ok(result: Result) -> Result:
    assert result.exit_code == 0, f"exit {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result


def test_models_lifecycle(live_server: LiveServer, tmp_path: Path) -> None:
    artifact = tiny_onnx(tmp_path / "tiny.onnx")

    pushed = ok(cli(live_server, "models", "push", str(artifact), "--name", "tiny", "--description", "first"))
    assert "Pushed tiny version 1" in pushed.stdout
    assert "Uploading" in pushed.stderr and "100%" in pushed.stderr  # the progress bar
    pushed = ok(cli(live_server, "models", "push", str(tiny_onnx(tmp_path / "t2.onnx", add=2.0)),
                    "--name", "tiny", "--stage", "production", "--json"))
    assert json.loads(pushed.stdout)["version"] == 2

    listed = ok(cli(live_server, "models", "list"))
    assert "tiny" in listed.stdout and "NAME" in listed.stdout
    rows = json.loads(ok(cli(live_server, "models", "list", "--json")).stdout)
    assert [(m["latest_version"], m["production_version"]) for m in rows if m["name"] == "tiny"] == [(2, 2)]

    shown = ok(cli(live_server, "models", "show", "tiny"))
    assert "production" in shown.stdout and "FP32" in shown.stdout and "input" in shown.stdout
    detail = json.loads(ok(cli(live_server, "models", "show", "tiny", "--version", "1", "--json")).stdout)
    assert detail["version"]["version"] == 1 and detail["version"]["description"] == "first"
    assert detail["version"]["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}]

    history = json.loads(ok(cli(live_server, "models", "versions", "tiny", "--json")).stdout)
    assert [(v["version"], v["stage"]) for v in history] == [(2, "production"), (1, "none")]
    assert "VERSION" in ok(cli(live_server, "models", "versions", "tiny")).stdout

    promoted = ok(cli(live_server, "models", "promote", "tiny", "1"))
    assert "version 1 is now in stage production" in promoted.stdout
    out = json.loads(ok(cli(live_server, "predict", "tiny", "--data", "[[0, 0, 0]]")).stdout)
    assert out == {"y": [[1.0, 1.0, 1.0]]}

    # deleting asks first; "n" keeps it
    refused = cli(live_server, "models", "delete", "tiny", "--version", "2", input="n\n")
    assert refused.exit_code == 1
    assert len(json.loads(ok(cli(live_server, "models", "versions", "tiny", "--json")).stdout)) == 2
    ok(cli(live_server, "models", "delete", "tiny", "--version", "2", "--yes"))
    assert len(json.loads(ok(cli(live_server, "models", "versions", "tiny", "--json")).stdout)) == 1
    ok(cli(live_server, "models", "delete", "tiny", input="y\n"))
    assert "tiny" not in [m["name"] for m in json.loads(ok(cli(live_server, "models", "list", "--json")).stdout)]


def test_label_files_name_the_classes_predict_ranks(live_server: LiveServer, tmp_path: Path) -> None:
    """``--labels OUTPUT=FILE`` (a label file, one per line as Triton reads them) on push and
    update; ``predict --classes N`` prints the top classes with them; a file that does not fit
    the output is refused and changes nothing."""
    artifact = tiny_onnx(tmp_path / "tiny.onnx")  # y = x + 1, three values per row
    labels = tmp_path / "labels.txt"
    labels.write_text("red\ngreen\nblue\n\n")  # blank lines at the end do not count
    ok(cli(live_server, "models", "push", str(artifact), "--name", "rgb", "--stage", "production",
           "--labels", f"y={labels}"))
    ranked = json.loads(ok(cli(live_server, "predict", "rgb", "--data", "[[0, 3, 1], [5, 0, 0]]",
                               "-o", "y", "--classes", "2")).stdout)
    assert ranked == {"y": [["4.000000:1:green", "2.000000:2:blue"], ["6.000000:0:red", "1.000000:1:green"]]}
    shown = ok(cli(live_server, "models", "show", "rgb")).stdout
    assert "y: red, green, blue" in shown and "labels=" not in shown

    two = tmp_path / "two.txt"
    two.write_text("cyan\nmagenta\n")
    refused = cli(live_server, "models", "update", "rgb", "-v", "1", "--labels", f"y={two}")
    assert refused.exit_code == 2 and "has 3 classes per row" in refused.stderr, refused.stderr
    for bad, says in [(("--labels", "y"), "OUTPUT=FILE"), (("--labels", f"y={tmp_path / 'none.txt'}"), "cannot read"),
                      (("--labels", f"y={labels}", "--no-labels"), "not both")]:
        result = cli(live_server, "models", "update", "rgb", "-v", "1", *bad)
        assert result.exit_code == 2 and says in result.output, result.output
    no_classes = cli(live_server, "predict", "rgb", "--data", "[[0, 3, 1]]", "--classes", "2")
    assert no_classes.exit_code == 2 and "give --output too" in no_classes.output

    updated = ok(cli(live_server, "models", "update", "rgb", "-v", "1", "--no-labels"))
    assert "labelled outputs: none of its own" in updated.stdout
    plain = json.loads(ok(cli(live_server, "predict", "rgb", "--data", "[[0, 3, 1]]", "-o", "y", "--classes", "1")).stdout)
    assert plain == {"y": [["4.000000:1"]]}
    ok(cli(live_server, "models", "update", "rgb", "--labels", f"y={labels}"))  # the model's, for all versions
    again = json.loads(ok(cli(live_server, "predict", "rgb", "--data", "[[0, 3, 1]]", "-o", "y", "--classes", "1")).stdout)
    assert again == {"y": [["4.000000:1:green"]]}


def test_predict_matches_onnxruntime(demo_server: LiveServer, tmp_path: Path) -> None:
    x = load_digits().data[:4].astype(np.float32)
    expected = reference_digits(demo_server, x)
    out = json.loads(ok(cli(demo_server, "predict", "digits", "--data", json.dumps(x.tolist()))).stdout)
    np.testing.assert_array_equal(out["label"], expected["label"])
    np.testing.assert_allclose(np.array(out["probabilities"], np.float32), expected["probabilities"], rtol=1e-6)

    data = tmp_path / "batch.json"
    data.write_text(json.dumps({"input": x.tolist()}))
    only = json.loads(ok(cli(demo_server, "predict", "digits", "--data", f"@{data}", "--output", "label", "-v", "1")).stdout)
    assert only == {"label": expected["label"].tolist()}

    oip = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [4, 64], "data": x.reshape(-1).tolist()}]}
    again = json.loads(ok(cli(demo_server, "predict", "digits", "--data", json.dumps(oip), "-o", "label")).stdout)
    assert again == only
    hurried = json.loads(ok(cli(demo_server, "predict", "digits", "--data", f"@{data}", "-o", "label",
                                "--deadline", "20")).stdout)
    assert hurried == only


def test_a_deadline_that_is_not_positive_exits_2(demo_server: LiveServer) -> None:
    result = cli(demo_server, "predict", "digits", "--data", "[[0]]", "--deadline", "0")
    assert result.exit_code == 2
    assert result.stderr.startswith("Error:") and "deadline_s must be a positive number" in result.stderr


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ("[[1, 2", "not valid JSON"),
        ("42", "JSON array or object"),
        ("@/no/such/file.json", "cannot read --data file"),
    ],
)
def test_bad_data_exits_2(demo_server: LiveServer, data: str, needle: str) -> None:
    result = cli(demo_server, "predict", "digits", "--data", data)
    assert result.exit_code == 2
    assert result.stderr.startswith("Error:") and needle in result.stderr
    assert "Traceback" not in result.output


def test_server_side_bad_input_exits_2(demo_server: LiveServer) -> None:
    result = cli(demo_server, "predict", "digits", "--data", "[[1, 2, 3]]")
    assert result.exit_code == 2
    assert "Error:" in result.stderr and "input" in result.stderr


def test_bad_key_exits_3_with_a_hint(demo_server: LiveServer) -> None:
    for args in (("models", "list"), ("predict", "digits", "--data", "[[0]]"), ("whoami",)):
        result = run(demo_server.url, BAD_KEY, *args)
        assert result.exit_code == 3, result.output
        assert result.stderr.startswith("Error:")
        assert "set MODELYARD_API_KEY" in result.stderr
        assert "Traceback" not in result.output and result.stdout == ""


def test_unknown_model_exits_4(demo_server: LiveServer) -> None:
    for args in (("models", "show", "nope"), ("models", "versions", "nope"),
                 ("predict", "nope", "--data", "[[0]]"), ("models", "promote", "nope", "1")):
        result = cli(demo_server, *args)
        assert result.exit_code == 4, result.output
        assert "Error:" in result.stderr and "nope" in result.stderr
        assert "modelyard models list" in result.stderr
    missing = cli(demo_server, "models", "show", "digits", "--version", "99")
    assert missing.exit_code == 4 and "modelyard models versions" in missing.stderr


def test_unreachable_server_exits_7_with_a_hint() -> None:
    result = run(f"http://127.0.0.1:{free_port()}", "my_x", "models", "list")
    assert result.exit_code == 7
    assert "cannot reach" in result.stderr and "modelyard serve" in result.stderr


def test_health_and_whoami(demo_server: LiveServer) -> None:
    assert "live yes, ready yes" in ok(cli(demo_server, "health")).stdout
    assert json.loads(ok(run(demo_server.url, "", "health", "--json")).stdout)["ready"] is True  # no key needed
    me = json.loads(ok(cli(demo_server, "whoami", "--json")).stdout)
    assert me["role"] == "admin" and me["url"] == demo_server.url
    assert "admin" in ok(cli(demo_server, "whoami")).stdout


def test_console_prints_its_address_and_opens_it(demo_server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[str] = []
    monkeypatch.setattr("webbrowser.open", lambda url: opened.append(url) or True)
    assert ok(run(demo_server.url, "", "console", "--no-open")).stdout.strip() == f"{demo_server.url}/console/"
    assert opened == []  # no key needed, nothing opened
    assert ok(run(demo_server.url, "", "console")).stdout.strip() == f"{demo_server.url}/console/"
    assert opened == [f"{demo_server.url}/console/"]
    monkeypatch.setattr("webbrowser.open", lambda url: False)  # a machine with no browser
    shown = ok(run(demo_server.url, "", "console"))
    assert "No browser to open here" in shown.stderr


def test_console_says_when_there_is_none_to_open(tmp_path: Path) -> None:
    off = LiveServer.build(tmp_path, builtin_models=False, grpc_enabled=False, console=False).start()
    try:
        refused = run(off.url, "", "console", "--no-open")
        assert refused.exit_code == 4 and "serves no web console" in refused.stderr
        assert "MODELYARD_CONSOLE=false" in refused.stderr
    finally:
        off.stop()
    unreachable = run(off.url, "", "console", "--no-open")  # stopped: nothing listens there now
    assert unreachable.exit_code != 0 and "is the server running?" in unreachable.stderr


@pytest.mark.parametrize(
    "command",
    [["models", "push"], ["models", "list"], ["models", "show"], ["models", "versions"],
     ["models", "promote"], ["models", "delete"], ["models", "update"], ["predict"], ["health"], ["whoami"],
     ["evaluate"], ["console"]],
)
def test_help_teaches_with_examples(command: list[str]) -> None:
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "160"})
    assert result.exit_code == 0
    assert "Examples" in result.stdout and "modelyard " in result.stdout


def test_real_subprocess(demo_server: LiveServer) -> None:
    env = {**os.environ, "MODELYARD_URL": demo_server.url, "MODELYARD_API_KEY": demo_server.admin_key}
    done = subprocess.run([sys.executable, "-m", "modelyard", "models", "list", "--json"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "digits" in [m["name"] for m in json.loads(done.stdout)]
    env["MODELYARD_API_KEY"] = BAD_KEY
    denied = subprocess.run([sys.executable, "-m", "modelyard", "models", "list"],
                            env=env, capture_output=True, text=True, timeout=120)
    assert denied.returncode == 3
    assert denied.stderr.startswith("Error:") and "Traceback" not in denied.stderr
