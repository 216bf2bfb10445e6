"""Configuration: defaults, the example file, environment precedence and fix-it errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from firehose_mod.config import ConfigError, load_settings

EXAMPLE = Path(__file__).parent.parent / "config" / "example.toml"


def test_defaults_run_locally():
    s = load_settings(env={})
    assert (s.host, s.port, s.data_dir) == ("127.0.0.1", 8080, Path("var"))
    assert s.did.startswith("did:web:") and s.key_path == Path("var/signing.key")


def test_example_config_is_valid_and_environment_wins(tmp_path):
    assert load_settings(EXAMPLE, env={}).port == 8080
    s = load_settings(EXAMPLE, env={"FIREHOSE_MOD_PORT": "9001", "FIREHOSE_MOD_STREAM_SEND_TIMEOUT": "2.5"})
    assert s.port == 9001 and s.stream_send_timeout == 2.5


@pytest.mark.parametrize(
    ("toml", "env", "message"),
    [
        ("[server]\nport = 70000\n", {}, "[server] port (env FIREHOSE_MOD_PORT): 70000 is not a TCP port"),
        ("[server]\nport = 'x'\n", {}, "[server] port: expected int"),
        ("[stream]\nsend_timeout = 0\n", {}, "positive number of seconds"),
        ("[store]\nsynchronous = 'OFF'\n", {}, "NORMAL may lose labels"),
        ("port = 1\n", {}, "unknown top-level setting 'port'"),
        ("[server\n", {}, "not valid TOML"),
        ("", {"FIREHOSE_MOD_DID": "did:example:x"}, "'did:example:x' is not a valid DID: expected did:plc:"),
        ("[ingest]\nverify_commits = true\n", {}, "Jetstream does not forward commit signatures"),
    ],
)
def test_invalid_settings_name_the_setting_and_the_fix(tmp_path, toml, env, message):
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_settings(path, env=env)
    assert message in str(info.value)


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "nope.toml", env={})


def test_example_config_documents_every_setting():
    from dataclasses import fields

    from firehose_mod.config import Settings

    text = EXAMPLE.read_text()
    undocumented = [f"[{f.metadata['section']}] {f.metadata['key']}" for f in fields(Settings)
                    if f"{f.metadata['key']} =" not in text]
    assert undocumented == []


def test_a_misspelled_environment_variable_names_the_closest_setting():
    with pytest.raises(ConfigError, match="unknown environment variable FIREHOSE_MOD_DATADIR: did you mean "
                                          "FIREHOSE_MOD_DATA_DIR"):
        load_settings(env={"FIREHOSE_MOD_DATADIR": "/srv/labeler"})
    with pytest.raises(ConfigError, match="FIREHOSE_MOD_NONSENSE_ENTIRELY: see config/example.toml"):
        load_settings(env={"FIREHOSE_MOD_NONSENSE_ENTIRELY": "1"})


def test_the_systemd_credential_is_the_config_file_unless_one_is_named(tmp_path):
    (tmp_path / "config.toml").write_text('[labeler]\ndid = "did:web:from-credential.example"\n')
    assert load_settings(env={"CREDENTIALS_DIRECTORY": str(tmp_path)}).did == "did:web:from-credential.example"
    named = tmp_path / "named.toml"
    named.write_text('[labeler]\ndid = "did:web:named.example"\n')
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path), "FIREHOSE_MOD_CONFIG": str(named)}
    assert load_settings(env=env).did == "did:web:named.example"
    assert load_settings(env={"CREDENTIALS_DIRECTORY": str(tmp_path / "empty")}).did == "did:web:localhost"
