import pytest

from gateway.config import ConfigError, load_config, replica_capacity_tokens


def test_file_then_environment_then_flags(tmp_path):
    path = tmp_path / "kvgate.yaml"
    path.write_text(
        "port: 7000\n"
        "policy: random\n"
        "routing: {block_bytes: 128, max_blocks: 10}\n"
        "replicas:\n"
        "  - {url: 'http://a:8000', models: [m], dram_gib: 1}\n"
    )
    environ = {"KVGATE_POLICY": "least_loaded", "KVGATE_ROUTING__MAX_BLOCKS": "20"}
    config = load_config(path, {"routing.max_blocks": 30}, environ)
    assert config.port == 7000  # file
    assert config.policy == "least_loaded"  # environment over file
    assert config.routing.block_bytes == 128 and config.routing.max_blocks == 30  # flags over both
    assert replica_capacity_tokens(config.replicas[0], 131072)["dram"] == 8192


def test_replicas_from_a_comma_separated_environment_variable():
    config = load_config(environ={"KVGATE_REPLICAS": "http://a:1,http://b:2/"})
    assert [r.url for r in config.replicas] == ["http://a:1", "http://b:2"]


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"routing.block_bytes": 0}, "routing.block_bytes"),
        ({"routing.blocksize": 64}, "routing.blocksize"),
        ({"policy": "fastest"}, "policy"),
        ({"profile": "tpu"}, "profile"),
        ({"replicas": ["ftp://x"]}, "replicas.0.url"),
        ({"upstream.max_retries": -1}, "upstream.max_retries"),
        ({"port": "eighty"}, "port"),
    ],
)
def test_invalid_keys_are_named(overrides, key):
    with pytest.raises(ConfigError, match=f"config key '{key}'"):
        load_config(overrides=overrides, environ={})


def test_unreadable_or_malformed_files_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml", environ={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("routing: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad, environ={})


def test_the_config_reference_in_the_docs_is_up_to_date():
    from pathlib import Path

    from gateway.config_docs import refresh

    text = Path(__file__).parents[2].joinpath("docs", "config.md").read_text()
    assert refresh(text) == text, "run: python -m gateway.config_docs --write docs/config.md"
