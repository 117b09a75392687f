"""Upstream registration, the secret store and model resolution in the core, without a server."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelyard.config import Settings
from modelyard.core.llm import BUILTIN_EMBEDDINGS, SecretStore
from modelyard.core.platform import Platform
from modelyard.core.principal import Principal
from modelyard.errors import InvalidArtifact, InvalidInput, ModelNotFound, PermissionDenied
from modelyard.runtimes.upstream import UpstreamConfig


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    p = Platform.open(Settings(home=tmp_path / "home", upstream_allow_hosts=["127.0.0.1", "llm.internal"]))
    yield p
    p.db.dispose()


def _principal(platform: Platform, role: str = "owner") -> Principal:
    tenant = platform.keys.ensure_default_tenant()
    return Principal(key_id="k", tenant_id=tenant, tenant_name="default", role=role)


def test_secret_store_is_private(tmp_path: Path) -> None:
    store = SecretStore(tmp_path / "s" / "keys.json")
    a, b = store.put("sk-one"), store.put("sk-two")
    assert a != b and store.get(a) == "sk-one" and store.get(b) == "sk-two"
    assert store.get(None) is None and store.get("missing") is None
    assert stat.S_IMODE((tmp_path / "s" / "keys.json").stat().st_mode) == 0o600


def test_upstream_config_refuses_keys_credentials_and_odd_schemes() -> None:
    ok = {"kind": "openai-upstream", "base_url": "http://h:1/v1/", "upstream_model": "m"}
    assert UpstreamConfig.parse(ok).base_url == "http://h:1/v1"
    for bad in ({**ok, "api_key": "sk"}, {**ok, "base_url": "ftp://h/v1"}, {**ok, "base_url": "http://u:p@h/v1"},
                {**ok, "kind": "other"}, {**ok, "upstream_model": ""}, []):
        with pytest.raises(InvalidArtifact):
            UpstreamConfig.parse(bad)


def test_add_upstream_checks_the_allow_list_and_hides_the_key(platform: Platform) -> None:
    tenant = platform.keys.ensure_default_tenant()
    for url in ("http://10.0.0.1/v1", "http://llm.internal.evil.com/v1", "gopher://127.0.0.1/"):
        with pytest.raises(InvalidInput) as info:
            platform.llm.add_upstream(tenant_id=tenant, model_name="up", base_url=url, upstream_model="m")
        assert info.value.details["param"] == "base_url"
    info_ = platform.llm.add_upstream(tenant_id=tenant, model_name="up", base_url="http://LLM.internal:9/v1",
                                      upstream_model="llama", api_key="sk-secret")
    assert info_.format == "upstream"
    blob = platform.artifacts.path_for(info_.sha256).read_bytes()
    assert b"sk-secret" not in blob and json.loads(blob)["upstream_model"] == "llama"
    assert "sk-secret" not in json.dumps(info_.config)
    served = platform.llm.resolve(_principal(platform), "up")
    assert served.upstream is not None and served.upstream_key == "sk-secret" and served.task == "upstream"


def test_resolve_builtin_and_refusals(platform: Platform) -> None:
    owner = _principal(platform)
    served = platform.llm.resolve(owner, BUILTIN_EMBEDDINGS)
    assert served.builtin and served.task == "embeddings" and served.source is not None
    assert (served.source.path() / "config.json").is_file()
    assert BUILTIN_EMBEDDINGS in {s.name for s in platform.llm.list_served(owner)}
    with pytest.raises(ModelNotFound):
        platform.llm.resolve(owner, "nothing-here")
    with pytest.raises(ModelNotFound):
        platform.llm.resolve(owner, f"{BUILTIN_EMBEDDINGS}:2")
    scoped = Principal(key_id="k", tenant_id=owner.tenant_id, tenant_name="d", role="inference", scopes=("other",))
    with pytest.raises(ModelNotFound):
        platform.llm.resolve(scoped, BUILTIN_EMBEDDINGS)
    with pytest.raises(PermissionDenied):
        platform.llm.resolve(Principal(key_id="k", tenant_id=owner.tenant_id, tenant_name="d", role="nobody"),
                             BUILTIN_EMBEDDINGS)


def test_deleting_an_upstream_version_forgets_its_key(platform: Platform) -> None:
    tenant = platform.keys.ensure_default_tenant()
    info = platform.llm.add_upstream(tenant_id=tenant, model_name="gone", base_url="http://127.0.0.1:9/v1",
                                     upstream_model="m", api_key="sk-bye")
    ref = info.config["secret_ref"]
    assert platform.llm.secrets.get(ref) == "sk-bye"
    platform.registry.delete_version(tenant, "gone", info.version)
    assert platform.llm.secrets.get(ref) is None
