"""Operator commands pause between their write batches only while a daemon runs on the database
(store/presence.py): a daemon's writes are not starved, and a command alone goes full speed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from firehose_mod.config import load_settings
from firehose_mod.daemon import open_label_log
from firehose_mod.store import label_log as label_log_module
from firehose_mod.store.label_log import EmitRequest
from firehose_mod.store.presence import daemon_running

HOLDER = """
import sys
from pathlib import Path
from firehose_mod.store.presence import DaemonPresence
held = DaemonPresence(Path(sys.argv[1]))
print("held", flush=True)
sys.stdin.read()
"""


def test_the_lock_is_seen_from_another_process_and_dies_with_it(tmp_path):
    db = tmp_path / "firehose-mod.sqlite3"
    assert not daemon_running(db)
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(db)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        assert daemon_running(db)
        assert daemon_running(db)  # asking does not take it away
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # however the daemon ends, the kernel drops the lock
        proc.wait(10)
    assert not daemon_running(db)


def test_unknown_means_a_daemon_may_run(tmp_path):
    assert daemon_running(None)  # no file to ask: pause, the safe side
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.geteuid() != 0:  # root opens anything
            assert daemon_running(ro / "firehose-mod.sqlite3")
    finally:
        ro.chmod(0o700)


@pytest.mark.anyio
async def test_a_command_pauses_after_its_batches_only_while_a_daemon_runs(tmp_path, monkeypatch):
    settings = load_settings(env={}, data_dir=tmp_path / "var")
    pauses: list[float] = []
    real_sleep = anyio.sleep

    async def recorded(seconds: float) -> None:
        if sys._getframe(1).f_code.co_name == "emit_many":  # the pause after a commit, nothing else's sleep
            pauses.append(seconds)
            seconds = 0
        await real_sleep(seconds)

    monkeypatch.setattr(label_log_module.anyio, "sleep", recorded)
    requests = [EmitRequest(f"at://did:plc:ewvi7nxzyoun6zhxrhs64oiz/fm.plyr.track/3k{i}", "spam") for i in range(50)]
    async with open_label_log(settings) as command:  # an operator command: busy_wait set
        await command.emit_many(requests[:25])
        assert pauses == []  # alone: no pause
        async with open_label_log(settings, daemon=True) as daemon:
            assert daemon_running(settings.db_path)
            await command.emit_many(requests[25:])
            assert len(pauses) == 1 and pauses[0] > 0  # as long as the commit held the lock
            await daemon.emit("at://did:plc:ewvi7nxzyoun6zhxrhs64oiz/fm.plyr.track/3kd", "spam")
            assert len(pauses) == 1  # the daemon itself never pauses
        assert not daemon_running(settings.db_path)  # the daemon's log closed: the lock went with it
        await command.emit("at://did:plc:ewvi7nxzyoun6zhxrhs64oiz/fm.plyr.track/3ke", "spam")
        assert len(pauses) == 1
    assert Path(str(settings.db_path) + ".daemon").exists()
