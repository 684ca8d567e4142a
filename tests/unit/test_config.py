from __future__ import annotations

from pathlib import Path

import pytest

from knhkd import config
from knhkd.config import DEFAULT_CONF, ConfigError, build, load, locate


def test_defaults_need_no_file() -> None:
    cfg = load(None, env={})
    assert cfg.storage.data_dir == "./var/knhkd"
    assert cfg.http.bind == "127.0.0.1:8080"
    assert cfg.admin_socket == Path("./var/knhkd/admin.sock")
    assert cfg.loop.interval_s == 5.0


def test_environment_overrides_file_and_flags_override_environment(tmp_path: Path) -> None:
    f = tmp_path / "k.toml"
    f.write_text('[storage]\ndata_dir = "/srv/a"\n[http]\nbind = "127.0.0.1:1"\n')
    cfg = load(f, env={"KNHKD_DATA_DIR": "/srv/b"})
    assert cfg.storage.data_dir == "/srv/b"
    assert cfg.http.bind == "127.0.0.1:1"
    cfg = load(f, env={"KNHKD_DATA_DIR": "/srv/b"}, overrides={("storage", "data_dir"): "/srv/c"})
    assert cfg.storage.data_dir == "/srv/c"


def test_relative_paths_in_a_file_are_relative_to_it(tmp_path: Path) -> None:
    f = tmp_path / "k.toml"
    f.write_text('[knowledge]\nontology_dir = "onto"\n')
    cfg = load(f, env={})
    assert Path(cfg.knowledge.ontology_dir) == tmp_path / "onto"
    # The conf tree's defaults are the package's, whatever the working directory.
    assert cfg.knowledge.shapes_dir == str(DEFAULT_CONF / "shapes")
    assert cfg.storage.data_dir == "./var/knhkd"


def test_the_default_conf_tree_is_complete() -> None:
    cfg = load(None, env={})
    for d in (
        cfg.knowledge.ontology_dir,
        cfg.knowledge.shapes_dir,
        cfg.governance.doctrines_dir,
        cfg.governance.guards_dir,
    ):
        assert Path(d).is_absolute() and Path(d).is_dir(), d
    assert (cfg.observation_shapes_dir / "finance.ttl").is_file()
    assert (DEFAULT_CONF / "knhkd.toml").is_file()


def test_configuration_search_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    system = tmp_path / "etc" / "knhkd.toml"
    monkeypatch.setattr(config, "SYSTEM_CONFIG", system)
    assert locate(None, {}) == (None, "embedded defaults")
    system.parent.mkdir()
    system.write_text("")
    assert locate(None, {}) == (system, str(system))
    assert locate(None, {"KNHKD_CONFIG": "/a.toml"}) == (Path("/a.toml"), "$KNHKD_CONFIG")
    assert locate(Path("b.toml"), {"KNHKD_CONFIG": "/a.toml"}) == (Path("b.toml"), "--config")


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"http": {"bnd": "x"}}, "http.bnd"),
        ({"nonsense": 1}, "nonsense"),
        ({"http": {"max_body_bytes": "big"}}, "http.max_body_bytes"),
        ({"http": {"max_body_bytes": 0}}, "http.max_body_bytes"),
        ({"http": {"bind": "localhost"}}, "http.bind"),
        ({"analyze": {"error_spike": {"error_rate": 2.0}}}, "analyze.error_spike.error_rate"),
        ({"storage": {"map_size_mb": 64, "max_map_size_mb": 32}}, "storage.max_map_size_mb"),
        ({"analyze": {"evidence_sample": 5000}}, "analyze.evidence_sample"),
        ({"ring": {"idle_poll_max_s": 0}}, "ring.idle_poll_max_s"),
    ],
)
def test_invalid_keys_are_named(raw: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        build(raw)
    assert info.value.key == key


def _fields(struct: object, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for name in struct.__struct_fields__:  # type: ignore[attr-defined]
        value = getattr(struct, name)
        if hasattr(value, "__struct_fields__"):
            out.update(_fields(value, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = value
    return out


def test_shipped_config_documents_every_setting_with_its_default() -> None:
    shipped = Path(__file__).resolve().parents[2] / "conf" / "knhkd.toml"
    text = shipped.read_text()
    defaults = _fields(load(None, env={}))
    loaded = _fields(load(shipped, env={}))
    for key, default in defaults.items():
        section, _, name = key.rpartition(".")
        assert f"[{section}]" in text, f"section [{section}] missing"
        assert f"{name} = " in text, f"{key} is not documented in conf/knhkd.toml"
        # Active values equal the embedded defaults; path keys are commented out.
        assert loaded[key] == default, key


def test_bad_toml_is_one_clear_error(tmp_path: Path) -> None:
    f = tmp_path / "k.toml"
    f.write_text("[http\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(f, env={})


def test_otel_variables_override_the_file_and_knhkd_flags_override_them() -> None:
    raw = {"telemetry": {"traces": "console", "service_name": "from-file",
                         "resource_attributes": {"site": "edge-1"}}}  # fmt: skip
    env = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/",
        "OTEL_SERVICE_NAME": "from-env",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod,team=ops%20a",
        "OTEL_EXPORTER_OTLP_HEADERS": "x-api-key=secret",
    }
    t = build(raw, env=env).telemetry
    assert t.traces == "otlp" and t.service_name == "from-env"
    assert t.otlp_endpoint == "http://collector:4318/v1/traces"
    assert t.resource_attributes == {"site": "edge-1", "deployment.environment": "prod",
                                     "team": "ops a"}  # fmt: skip
    assert t.otlp_headers == {"x-api-key": "secret"}
    # The signal-specific endpoint wins over the generic one, used as is.
    env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = "https://c.example:4318/custom"
    assert build(raw, env=env).telemetry.otlp_endpoint == "https://c.example:4318/custom"
    # Flags (and KNHKD_*) come last.
    flags = {("telemetry", "traces"): "none"}
    assert build(raw, env=env, overrides=flags).telemetry.traces == "none"


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"OTEL_TRACES_EXPORTER": "jaeger"}, "OTEL_TRACES_EXPORTER"),
        ({"OTEL_RESOURCE_ATTRIBUTES": "no-equals-sign"}, "OTEL_RESOURCE_ATTRIBUTES"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}, "telemetry.otlp_endpoint"),
    ],
)
def test_bad_otel_variables_are_named(env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        build({}, env=env)
    assert info.value.key == key
