"""`firehose-mod db backup`: an online copy while a writer appends labels as fast as it can."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time

import pytest

from tests.procs import env_for, run_cli


def _labels(path) -> dict[int, bytes]:
    conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
    try:
        return dict(conn.execute("SELECT seq, cbor FROM labels ORDER BY seq"))
    finally:
        conn.close()


@pytest.mark.slow
def test_backup_while_a_writer_appends_is_a_consistent_prefix(tmp_path):
    data = tmp_path / "var"
    env = env_for(data)
    run_cli("key", "create", env=env)
    writer = subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.emit_forever", str(data)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    dest = tmp_path / "backups" / "copy.sqlite3"
    dest.parent.mkdir()
    try:
        acked = 0
        deadline = time.monotonic() + 30
        while acked < 1500 and time.monotonic() < deadline:
            _, seq, _ = writer.stdout.readline().split()
            acked = int(seq)
        assert acked >= 1500
        # Small steps so the copy spans many steps while the writer keeps committing.
        out = run_cli("db", "backup", str(dest), "--json", "--pages-per-step", "8", env=env, timeout=60)
        report = json.loads(out.stdout)
        # The writer is still alive: the backup never blocked it.
        assert writer.poll() is None
        after = int(writer.stdout.readline().split()[1])
    finally:
        writer.kill()
        writer.wait()

    assert report["integrity_ok"] is True
    assert report["pages"] > 8 and report["bytes"] == dest.stat().st_size
    assert report["restarts"] <= 5
    assert not list(tmp_path.joinpath("backups").glob(".copy.sqlite3.tmp-*"))

    conn = sqlite3.connect(dest)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    copy, live = _labels(dest), _labels(data / "firehose-mod.sqlite3")
    assert report["labels"] == len(copy) and report["head_seq"] == max(copy)
    assert max(copy) >= acked and max(live) >= after > acked
    # A prefix of the live log: every seq in the copy has the same signed bytes, none is missing.
    assert list(copy) == [s for s in live if s <= max(copy)]
    assert all(live[s] == cbor for s, cbor in copy.items())


def test_backup_refuses_an_existing_dest_and_a_missing_directory(tmp_path):
    data = tmp_path / "var"
    env = env_for(data)
    run_cli("key", "create", env=env)
    run_cli("label", "emit", "at://did:plc:ewvi7nxzyoun6zhxrhs64oiz/fm.plyr.track/3k", "porn", env=env)
    dest = tmp_path / "copy.sqlite3"
    first = run_cli("db", "backup", str(dest), env=env)
    assert "head seq 1, 1 labels" in first.stdout

    again = run_cli("db", "backup", str(dest), env=env, check=False)
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [
        f"firehose-mod: {dest} already exists; choose another name or pass --force to replace it"]

    run_cli("label", "emit", "at://did:plc:ewvi7nxzyoun6zhxrhs64oiz/fm.plyr.track/3k", "porn", "--neg", env=env)
    forced = json.loads(run_cli("db", "backup", str(dest), "--force", "--json", env=env).stdout)
    assert forced["head_seq"] == 2 and forced["labels"] == 2

    missing = tmp_path / "nowhere" / "copy.sqlite3"
    proc = run_cli("db", "backup", str(missing), env=env, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"firehose-mod: cannot back up to {missing}: the directory {missing.parent} does not exist"]
    assert not missing.parent.exists()
