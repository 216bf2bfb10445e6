"""The shipped systemd unit starts the daemon: its syscall filter, its user, its config.

`tests/test_systemd_sandbox.py` applies the unit's own `[Service]` lines (seccomp filters,
an unprivileged user, credentials, state directory) and execs its `ExecStart`; the daemon must
come up, fetch a track over a DNS name, decode its audio with ffmpeg, score its cover with
onnxruntime, answer its health check and stop cleanly on SIGTERM. Any call the filter denies
kills it with SIGSYS, as systemd would.
"""

from __future__ import annotations

import io
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio.from_thread
import httpx
import pytest


from tests import media as M
from tests.fakes.jetstream import T0, FakeJetstream, commit, track_record
from tests.fakes.media_server import MediaServer
from tests.procs import free_port, operator_status
from tests.test_systemd_sandbox import UID, needs_sandbox, read_unit, sandbox_command

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parent.parent
UNIT = ROOT / "systemd" / "firehose-mod.service"


@pytest.fixture
def machine():
    """A scratch root for the unit's paths: /etc/firehose-mod and /var/lib/firehose-mod live here."""
    root = Path(tempfile.mkdtemp(prefix="firehose-mod-unit-"))
    root.chmod(0o755)  # as /etc and /var/lib are
    (root / "etc").mkdir(mode=0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def install_config(machine: Path, body: str) -> None:
    """The config file as the unit's install comment installs it: root's alone."""
    config = machine / "etc" / "config.toml"
    config.write_text(body)
    config.chmod(0o600)


def cover_png() -> bytes:
    from tests.test_cover import artwork

    buf = io.BytesIO()
    artwork(3).save(buf, format="PNG")
    return buf.getvalue()


@needs_sandbox
def test_the_unit_starts_scans_a_track_and_stops_under_its_own_sandbox(machine, tmp_path):
    port = free_port()
    media = MediaServer()
    media.files["/song.wav"] = (M.write_wav(tmp_path / "song.wav", M.song(5, 12)).read_bytes(), "audio/wav")
    media.files["/cover.png"] = (cover_png(), "image/png")
    with media, anyio.from_thread.start_blocking_portal() as portal:
        host = f"http://localhost:{media.port}"  # a name: the daemon resolves it (getaddrinfo) in the sandbox
        record = track_record("Sandbox Song", audioUrl=f"{host}/song.wav", imageUrl=f"{host}/cover.png",
                              fileType="wav")
        jetstream = FakeJetstream([commit(T0, "did:plc:artist", "fm.plyr.track", "3ksandbox", "create", record)])
        serving, jetstream_port = portal.start_task(jetstream.serve)
        install_config(machine, f"""
[labeler]
did = "did:web:sandbox.example"
[server]
port = {port}
[ingest]
jetstream_endpoints = ["ws://firehose-mod-sandbox.invalid:{jetstream_port}", "ws://localhost:{jetstream_port}"]
jetstream_compress = false
[media]
allow_networks = ["127.0.0.0/8", "::1/128"]
allow_http = true
""")
        unit_paths = {"/opt/firehose-mod/venv": Path(sys.prefix), "/etc/firehose-mod": machine / "etc",
                      "/var/lib/firehose-mod": machine / "state"}
        daemon = subprocess.Popen(sandbox_command(UNIT, unit_paths, {}, scratch=machine), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        try:
            status, metrics = _wait_scanned(daemon, port, machine / "state")
        finally:
            daemon.send_signal(signal.SIGTERM)
            _, err = daemon.communicate(timeout=30)
        serving.cancel()
    assert daemon.returncode == 0, f"exit {daemon.returncode} ({_signal_name(daemon.returncode)}): {err[-3000:]}"
    assert status["did"] == "did:web:sandbox.example"  # the config file was read
    assert status["queue"]["done"] == 1 and status["queue"]["failed"] == 0
    for scanner in ("copyright", "cover-art"):  # ffmpeg decoded the audio, onnxruntime scored the cover
        assert f'firehose_mod_scanner_runs_total{{scanner="{scanner}"}} 1.0' in metrics
        assert f'firehose_mod_scanner_failures_total{{scanner="{scanner}"}} 1.0' not in metrics
    state = machine / "state"
    assert state.stat().st_uid == UID and (state / "signing.key").stat().st_mode & 0o777 == 0o600


def _wait_scanned(daemon: subprocess.Popen, port: int, state: Path) -> tuple[dict, str]:
    """Wait for the health check, then for the track to be scanned; the status and metrics then."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            err = daemon.stderr.read()
            raise AssertionError(f"the unit died: exit {daemon.returncode} ({_signal_name(daemon.returncode)}): "
                                 f"{err[-3000:]}")
        status = operator_status(port, state)
        if status is not None and status["queue"]["done"] + status["queue"]["failed"] >= 1:
            return status, httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        time.sleep(0.2)
    raise AssertionError("the unit did not scan the track in 90 s")


def _signal_name(returncode: int | None) -> str:
    return signal.Signals(-returncode).name if returncode and returncode < 0 else "no signal"


@needs_sandbox
def test_numpy_needs_what_the_unit_no_longer_denies(machine):
    """Under the old `SystemCallFilter=~@privileged @resources`, importing numpy is SIGSYS (mbind)."""
    old = machine / "old.service"
    old.write_text(UNIT.read_text().replace("SystemCallFilter=~@privileged\n",
                                            "SystemCallFilter=~@privileged @resources\n"))
    install_config(machine, "")
    load_numpy = [sys.executable, "-c", "import numpy"]
    paths = {"/etc/firehose-mod": machine / "etc", "/var/lib/firehose-mod": machine / "state"}
    died = subprocess.run(sandbox_command(old, paths, {}, load_numpy, scratch=machine), capture_output=True)
    assert died.returncode == -signal.SIGSYS
    lives = subprocess.run(sandbox_command(UNIT, paths, {}, load_numpy, scratch=machine), capture_output=True)
    assert lives.returncode == 0, lives.stderr


def test_the_unit_passes_its_config_as_a_credential_and_says_how_to_reach_the_key():
    unit = read_unit(UNIT)
    text = UNIT.read_text()
    # A root-only file is unreadable by a DynamicUser: systemd hands it over as a credential.
    assert unit["LoadCredential"] == ["config.toml:/etc/firehose-mod/config.toml"]
    assert "sudo -u firehose-mod" not in text  # that user exists only while the unit runs
    assert "key show" in text and "journalctl -u firehose-mod" in text


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed (apt-get install systemd)")
def test_systemd_verifies_the_unit_and_rates_its_exposure_low(tmp_path):
    unit = tmp_path / "firehose-mod.service"
    unit.write_text(UNIT.read_text().replace("/opt/firehose-mod/venv", sys.prefix))  # an ExecStart that exists
    verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr
    security = subprocess.run(["systemd-analyze", "security", "--offline=true", "--threshold=20", str(unit)],
                              capture_output=True, text=True)
    if "--offline" in security.stderr:
        pytest.skip("systemd-analyze security --offline needs systemd 250 or newer")
    assert security.returncode == 0, security.stdout[-2000:]  # overall exposure at most 2.0 of 10


TEMPLATE = ROOT / "systemd" / "firehose-mod@.service"


def test_the_role_template_is_the_unit_with_a_role_and_an_env_file_per_instance():
    """One process per role (`run --role %i`) with the hardening of the main unit, line for line."""
    unit, template = read_unit(UNIT), read_unit(TEMPLATE)
    assert template.pop("ExecStart") == ["/opt/firehose-mod/venv/bin/firehose-mod run --role %i"]
    assert template.pop("EnvironmentFile") == ["-/etc/firehose-mod/%i.env"]
    unit.pop("ExecStart")
    assert template == unit
    assert "Description=firehose-mod %i:" in TEMPLATE.read_text()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed (apt-get install systemd)")
def test_systemd_verifies_an_instance_of_the_role_template(tmp_path):
    instance = tmp_path / "firehose-mod@scan-1.service"
    instance.write_text(TEMPLATE.read_text().replace("/opt/firehose-mod/venv", sys.prefix))
    verify = subprocess.run(["systemd-analyze", "verify", str(instance)], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr
