"""The operator commands, run as real processes against real servers."""

from __future__ import annotations

import json
import signal

import httpx
import pytest

from firehose_mod.labels import Label, verify_label

from tests.procs import env_for, free_port, json_lines, run_cli, start_server

pytestmark = pytest.mark.slow

SUBJECT = "at://did:plc:uploader/fm.plyr.track/3kabc"


def label_from_json(d: dict) -> Label:
    import base64

    raw = d["sig"]["$bytes"]
    return Label.from_wire({**d, "sig": base64.b64decode(raw + "=" * (-len(raw) % 4))})


def test_help_explains_the_commands():
    out = run_cli("--help", env=env_for(__import__("pathlib").Path("/nonexistent"))).stdout
    for word in ("serve", "key", "label", "status", "FIREHOSE_MOD_DATA_DIR", "subscribeLabels"):
        assert word in out


def test_key_show_prints_the_did_key_that_verifies_emitted_labels(tmp_path):
    env = env_for(tmp_path / "var")
    did_key = run_cli("key", "show", env=env).stdout.strip()
    assert did_key.startswith("did:key:zQ3s")
    assert (tmp_path / "var" / "signing.key").stat().st_mode & 0o777 == 0o600
    emitted = json.loads(run_cli("label", "emit", SUBJECT, "porn", env=env).stdout)
    assert emitted["seq"] == 1
    assert verify_label(did_key, label_from_json(emitted["label"]))
    doc = json.loads(run_cli("key", "show", "--json", env=env).stdout)["did_document"]
    assert doc["verificationMethod"][0]["id"].endswith("#atproto_label")
    assert "did:key:" + doc["verificationMethod"][0]["publicKeyMultibase"] == did_key


def test_emit_twice_and_negate_twice_write_once_each(tmp_path):
    env = env_for(tmp_path / "var")
    run_cli("label", "emit", SUBJECT, "porn", env=env)
    again = run_cli("label", "emit", SUBJECT, "porn", env=env)
    assert again.stdout == "" and "already in force" in again.stderr
    neg = json.loads(run_cli("label", "emit", SUBJECT, "porn", "--neg", env=env).stdout)
    assert neg["seq"] == 2 and neg["label"]["neg"] is True
    assert "nothing to negate" in run_cli("label", "emit", SUBJECT, "porn", "--neg", env=env).stderr


@pytest.mark.parametrize(
    ("env_extra", "args", "message"),
    [
        ({"FIREHOSE_MOD_PORT": "eighty"}, ["key", "show"], "FIREHOSE_MOD_PORT: expected int"),
        ({"FIREHOSE_MOD_DID": "labeler"}, ["key", "show"], "did:plc or did:web"),
        ({}, ["label", "emit", SUBJECT, "NSFW"], "lowercase"),
    ],
)
def test_bad_configuration_and_input_exit_2_with_a_fix(tmp_path, env_extra, args, message):
    proc = run_cli(*args, env=env_for(tmp_path / "var", **env_extra), check=False)
    assert proc.returncode == 2 and message in proc.stderr


def test_config_file_is_read_and_unknown_keys_are_refused(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('[labeler]\ndid = "did:plc:fromfile"\n')
    env = env_for(tmp_path / "var")
    emitted = json.loads(run_cli("--config", str(good), "label", "emit", SUBJECT, "porn", env=env).stdout)
    assert emitted["label"]["src"] == "did:plc:fromfile"
    bad = tmp_path / "bad.toml"
    bad.write_text("[labeler]\nddi = 'x'\n")
    proc = run_cli("--config", str(bad), "key", "show", env=env, check=False)
    assert proc.returncode == 2 and "unknown setting [labeler] ddi" in proc.stderr


def test_tail_replays_from_a_cursor_and_status_shows_the_head(tmp_path):
    port = free_port()
    env = env_for(tmp_path / "var", port)
    for i in range(5):
        run_cli("label", "emit", f"{SUBJECT}{i}", "porn", env=env)
    server = start_server(env, port)
    try:
        tail = run_cli("label", "tail", "--cursor", "2", "--no-follow", env=env)
        rows = json_lines(tail.stdout)
        assert [r["seq"] for r in rows] == [3, 4, 5]
        assert rows[0]["label"]["uri"] == f"{SUBJECT}2"
        status = run_cli("status", env=env).stdout
        assert "head     seq 5" in status and "nobody is subscribed" in status
        future = run_cli("label", "tail", "--cursor", "99", "--no-follow", env=env, check=False)
        assert future.returncode == 1 and "FutureCursor" in future.stderr
        health = httpx.get(f"http://127.0.0.1:{port}/xrpc/_health").json()
        assert "version" in health
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=10) == 0


def test_status_without_a_server_says_so_and_shows_the_database_head(tmp_path):
    env = env_for(tmp_path / "var", free_port())
    run_cli("label", "emit", SUBJECT, "porn", env=env)
    proc = run_cli("status", env=env, check=False)
    assert proc.returncode == 1
    assert "Is `firehose-mod serve` running?" in proc.stderr and "head seq 1" in proc.stderr


def test_backfill_command_queues_tracks_reports_and_resumes(tmp_path):
    from tests.fakes.pds import FakeNetwork, make_records

    net = FakeNetwork(page_size=2)
    net.add_pds("one")
    net.add_repo("did:plc:artistoneaaaaaaaaaaaaaaa", "one", make_records("did:plc:artistoneaaaaaaaaaaaaaaa", 5))
    net.add_repo("did:plc:artisttwoaaaaaaaaaaaaaaa", "one", make_records("did:plc:artisttwoaaaaaaaaaaaaaaa", 3, 10))
    net.add_repo("did:plc:nopdsaaaaaaaaaaaaaaaaaaa", None)
    with net:
        env = env_for(tmp_path / "var", FIREHOSE_MOD_PLC_URL=net.plc_url)
        first = run_cli("backfill", "--relay", net.relay_url, env=env, check=False)
        report = json.loads(first.stdout)
        assert first.returncode == 1 and "--retry-failed" in first.stderr  # one repo has no PDS
        assert (report["repos_done"], report["repos_failed"], report["enqueued"]) == (2, 1, 8)
        assert report["failures"][0]["did"] == "did:plc:nopdsaaaaaaaaaaaaaaaaaaa"
        again = json.loads(run_cli("backfill", "--did", "did:plc:artistoneaaaaaaaaaaaaaaa", env=env).stdout)
        assert again["enqueued"] == 0  # already read: nothing new, nothing twice


def test_scan_command_is_a_dry_run_with_json_per_target(tmp_path):
    from tests import media as M

    folder = tmp_path / "uploads"
    folder.mkdir()
    M.write_wav(folder / "a.wav", M.song(7, 15))
    M.write_wav(folder / "b.wav", M.song(8, 15))
    env = env_for(tmp_path / "var")
    proc = run_cli("scan", str(folder), "--json", env=env, timeout=120)
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert sorted(r["target"].rsplit("/", 1)[-1] for r in rows) == ["a.wav", "b.wav"]  # in finishing order
    assert all(r["match"] is None and r["kind"] == "audio" and "decisions" in r for r in rows)
    assert "nothing was written" in proc.stderr
    assert not (tmp_path / "var").exists()  # not even a database or a key
