"""The operator commands, run as real processes against real servers."""

from __future__ import annotations

import json
import signal

import httpx
import pytest

from firehose_mod.labels import Label, verify_label

from tests.procs import env_for, free_port, json_lines, operator_status, run_cli, start_server

pytestmark = pytest.mark.slow

DID = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"
SUBJECT = f"at://{DID}/fm.plyr.track/3kabc"


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
    did_key = run_cli("key", "create", env=env).stdout.strip()
    assert run_cli("key", "show", env=env).stdout.strip() == did_key and did_key.startswith("did:key:zQ3s")
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
        ({"FIREHOSE_MOD_DID": "labeler"}, ["key", "show"], "'labeler' is not a valid DID"),
        ({}, ["label", "emit", SUBJECT, "NSFW"], "lowercase"),
    ],
)
def test_bad_configuration_and_input_exit_2_with_a_fix(tmp_path, env_extra, args, message):
    proc = run_cli(*args, env=env_for(tmp_path / "var", **env_extra), check=False)
    assert proc.returncode == 2 and message in proc.stderr


def test_config_file_is_read_and_unknown_keys_are_refused(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('[labeler]\ndid = "did:web:fromfile.example"\n')
    env = env_for(tmp_path / "var")
    emitted = json.loads(run_cli("--config", str(good), "label", "emit", SUBJECT, "porn", env=env).stdout)
    assert emitted["label"]["src"] == "did:web:fromfile.example"
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
        env = env_for(tmp_path / "var", FIREHOSE_MOD_PLC_URL=net.plc_url,  # the fakes are on loopback:
                      FIREHOSE_MOD_MEDIA_ALLOW_NETWORKS="127.0.0.0/8", FIREHOSE_MOD_MEDIA_ALLOW_HTTP="true")
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


STEADY_WRITER = """
import sys, anyio
from pathlib import Path
from firehose_mod.config import load_settings
from firehose_mod.daemon import open_label_log

async def main():
    async with open_label_log(load_settings(env={}, data_dir=Path(sys.argv[1]))) as log:
        for i in range(10**6):
            stored = await log.emit(f"at://did:plc:ewvi7nxzyoun6zhxrhs64oiz/fm.plyr.track/3kw{i}", "spam")
            print(stored.seq, flush=True)
            await anyio.sleep(0.3)

anyio.run(main)
"""


def test_tail_no_follow_stops_at_the_head_it_saw_while_labels_keep_coming(tmp_path):
    import subprocess
    import sys

    port = free_port()
    env = env_for(tmp_path / "var", port)
    for i in range(3):
        run_cli("label", "emit", f"{SUBJECT}{i}", "porn", env=env)
    server = start_server(env, port)
    writer = subprocess.Popen([sys.executable, "-c", STEADY_WRITER, str(tmp_path / "var")],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        writer.stdout.readline()  # a label every 0.3 s: a 2 s quiet moment never comes
        rows = json_lines(run_cli("label", "tail", "--cursor", "0", "--no-follow", env=env, timeout=30).stdout)
        seqs = [r["seq"] for r in rows]
        assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= 4
        nothing = run_cli("label", "tail", "--no-follow", env=env, timeout=10)  # live only: nothing to replay
        assert nothing.stdout == ""
    finally:
        writer.kill()
        writer.wait()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=10)


@pytest.mark.parametrize(
    "args",
    [
        ["label", "emit", "at://did:plc:abc123/fm.plyr.track/3kabc", "porn"],
        ["label", "emit", "did:plc:abc123", "spam"],
        ["scan", "at://did:plc:abc123/fm.plyr.track/3kabc"],
        ["explain", "at://did:plc:abc123/fm.plyr.track/3kabc"],
        ["rescan", "--uri", "at://did:plc:abc123/fm.plyr.track/3kabc"],
        ["backfill", "--did", "did:plc:abc123"],
    ],
)
def test_every_command_checks_a_did_the_same_way(tmp_path, args):
    env = env_for(tmp_path / "var")
    run_cli("label", "emit", SUBJECT, "porn", env=env)  # a database to look in
    proc = run_cli(*args, env=env, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "'did:plc:abc123' is not a valid DID: a did:plc is did:plc: and 24 characters of a-z and 2-7" in proc.stderr


def test_rescan_uri_checks_its_argument(tmp_path):
    env = env_for(tmp_path / "var")
    run_cli("label", "emit", SUBJECT, "porn", env=env)
    not_a_uri = run_cli("rescan", "--uri", "3kabc", env=env, check=False)
    assert not_a_uri.returncode == 2 and "--uri '3kabc' is not an at:// URI" in not_a_uri.stderr
    unknown = run_cli("rescan", "--uri", SUBJECT, env=env, check=False)
    assert unknown.returncode == 2 and f"no stored track {SUBJECT}" in unknown.stderr


def test_scan_of_a_file_ffmpeg_cannot_decode_is_an_error_and_the_time_is_the_scan_s(tmp_path):
    from tests import media as M

    bad = tmp_path / "broken.mp3"
    bad.write_bytes(b"ID3" + bytes(5000))
    good = M.write_wav(tmp_path / "good.wav", M.song(3, 8))
    env = env_for(tmp_path / "var")
    proc = run_cli("scan", str(bad), str(good), env=env, check=False, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    reports = {block.split()[0]: block for block in proc.stdout.split("\n/")}
    broken = next(b for name, b in reports.items() if name.endswith("broken.mp3"))
    assert "ERROR" in broken and "ffmpeg" in broken and "nothing would change" not in broken
    assert "scanned in" in proc.stdout.splitlines()[0]  # not "(audio, file, 0.4 s)", read as the length


def test_logs_are_json_in_a_pipe_and_readable_on_a_terminal_and_never_on_stdout(tmp_path):
    import os
    import pty
    import subprocess
    import sys

    env = env_for(tmp_path / "var")
    piped = run_cli("label", "emit", SUBJECT, "porn", env=env)
    assert json.loads(piped.stdout)["seq"] == 1  # stdout: the answer only
    assert json.loads(piped.stderr.splitlines()[0])["event"] == "key.generated"
    primary, terminal = pty.openpty()
    proc = subprocess.run([sys.executable, "-m", "firehose_mod", "label", "emit", SUBJECT, "spam"], env=env,
                          stdout=subprocess.PIPE, stderr=terminal, text=True, timeout=30)
    os.close(terminal)
    shown = os.read(primary, 65536).decode()
    os.close(primary)
    assert json.loads(proc.stdout)["seq"] == 2
    assert "label.written" in shown and not shown.lstrip().startswith("{")


def test_after_catalogue_add_the_hinted_rescan_all_works_offline(tmp_path):
    """A track the daemon scanned, then a reference for it: `rescan --all` finds the match with no network."""
    import io
    import subprocess
    import sys

    import anyio.from_thread

    from tests import media as M
    from tests.fakes.jetstream import T0, FakeJetstream, commit, track_record
    from tests.fakes.media_server import MediaServer
    from tests.test_cover import artwork

    song = M.write_wav(tmp_path / "song.wav", M.song(11, 25))
    reference = M.write_wav(tmp_path / "reference.wav", M.song(11, 25) * 0.8)  # the same music, another file
    cover = io.BytesIO()
    artwork(4).save(cover, format="PNG")
    uri = f"at://{DID}/fm.plyr.track/3ksong"
    port = free_port()
    media = MediaServer()
    media.files["/song.wav"] = (song.read_bytes(), "audio/wav")
    media.files["/cover.png"] = (cover.getvalue(), "image/png")
    with media, anyio.from_thread.start_blocking_portal() as portal:
        record = track_record("Song", audioUrl=f"{media.base}/song.wav", imageUrl=f"{media.base}/cover.png")
        jetstream = FakeJetstream([commit(T0, DID, "fm.plyr.track", "3ksong", "create", record)])
        serving, jetstream_port = portal.start_task(jetstream.serve)
        env = env_for(tmp_path / "var", port, FIREHOSE_MOD_JETSTREAM_ENDPOINTS=f"ws://127.0.0.1:{jetstream_port}",
                      FIREHOSE_MOD_JETSTREAM_COMPRESS="false", FIREHOSE_MOD_MEDIA_ALLOW_NETWORKS="127.0.0.0/8",
                      FIREHOSE_MOD_MEDIA_ALLOW_HTTP="true")
        daemon = subprocess.Popen([sys.executable, "-m", "firehose_mod", "run"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _wait_until_scanned(daemon, port, tmp_path / "var")
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=30)
        serving.cancel()
    # Offline from here: the media host and Jetstream are gone.
    added = run_cli("catalogue", "add", str(reference), env=env, timeout=120)
    assert "firehose-mod rescan --all" in added.stdout and "replay" not in added.stdout
    rescan = run_cli("rescan", "--all", env=env, timeout=120)
    assert uri in rescan.stdout and "copyright-violation" in rescan.stdout, rescan.stdout + rescan.stderr
    assert "0 with scanner failures" in rescan.stdout


def _wait_until_scanned(daemon, port: int, data_dir) -> None:
    import time

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert daemon.poll() is None, daemon.stderr.read().decode()[-3000:]
        status = operator_status(port, data_dir)
        if status is not None and status["queue"]["done"] + status["queue"]["failed"] >= 1:
            assert status["queue"]["failed"] == 0
            return
        time.sleep(0.2)
    raise AssertionError("the daemon did not scan the track in 60 s")


def test_status_sends_the_local_token_only_to_this_labeler(tmp_path):
    from firehose_mod.cli.labels import status_headers
    from firehose_mod.config import load_settings
    from firehose_mod.server.admin import load_or_create_token

    settings = load_settings(env={}, data_dir=tmp_path / "var", public_url="https://labeler.example.com")
    token = load_or_create_token(settings.data_dir)
    mine = {"Authorization": f"Bearer {token}"}
    assert status_headers(settings, None, env={}) == mine
    assert status_headers(settings, "http://127.0.0.1:9999", env={}) == mine
    assert status_headers(settings, "https://labeler.example.com/", env={}) == mine
    assert status_headers(settings, "https://other-labeler.example.net", env={}) == {}
    named = status_headers(settings, "https://other-labeler.example.net", env={"FIREHOSE_MOD_OPERATOR_TOKEN": "fhm_x"})
    assert named == {"Authorization": "Bearer fhm_x"}
