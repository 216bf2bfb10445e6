"""Start-up errors an operator can fix are one line on stderr and exit 2, never a traceback.

Each cause is real: a port another socket holds, a name that does not resolve, a data
directory on a read-only mount, a disk that is full (a 1 MiB tmpfs). The mounts are made in a
private mount namespace (`unshare --mount`), which needs root; CI runs as root.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys

import pytest

from tests.procs import env_for, run_cli

pytestmark = pytest.mark.slow

SUBJECT = "at://did:plc:ewvi7nxzyoun6zhxrhs64oiz/fm.plyr.track/3kabc"


def error_lines(stderr: str) -> list[str]:
    """What stderr says besides log lines (JSON objects)."""
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith("{")]


def assert_one_line(proc: subprocess.CompletedProcess, *words: str) -> None:
    lines = error_lines(proc.stderr)
    assert proc.returncode == 2 and len(lines) == 1, f"exit {proc.returncode}:\n{proc.stderr[-4000:]}"
    assert lines[0].startswith("firehose-mod: ")
    for word in words:
        assert word in lines[0], lines[0]


@pytest.mark.parametrize("command", ["serve", "run"])
def test_a_port_in_use_is_one_line(tmp_path, command):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_cli(command, env=env_for(tmp_path / "var", port, FIREHOSE_MOD_INGEST_SOURCE="none"), check=False,
                       timeout=60)
    assert_one_line(proc, f"127.0.0.1:{port}", "in use", "--port")


def test_a_listen_host_that_does_not_resolve_is_one_line(tmp_path):
    proc = run_cli("serve", "--host", "firehose-mod-test.invalid", env=env_for(tmp_path / "var"), check=False)
    assert_one_line(proc, "'firehose-mod-test.invalid'", "does not resolve", "FIREHOSE_MOD_HOST")


def test_a_file_in_place_of_the_data_directory_is_one_line(tmp_path):
    data = tmp_path / "var"
    data.write_text("not a directory")
    proc = run_cli("serve", env=env_for(data), check=False)
    assert_one_line(proc, str(data), "it is a file, not a directory", "--data-dir")


def _mount_namespace_unavailable() -> str | None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return "needs root and unshare(1) to mount a read-only or full file system privately (CI runs as root)"
    probe = subprocess.run(["unshare", "--mount", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True, text=True)
    return None if probe.returncode == 0 else f"cannot mount in a private namespace: {probe.stderr.strip()}"


needs_mounts = pytest.mark.skipif(_mount_namespace_unavailable() is not None,
                                  reason=_mount_namespace_unavailable() or "")


def run_mounted(setup: str, data_dir, *args: str) -> subprocess.CompletedProcess:
    """`firehose-mod ARGS` after the shell `setup`, in a private mount namespace."""
    cli = shlex.join([sys.executable, "-m", "firehose_mod", *args])
    return subprocess.run(["unshare", "--mount", "sh", "-c", f"set -e; {setup}; exec {cli}"],
                          env=env_for(data_dir), capture_output=True, text=True, timeout=60)


@needs_mounts
@pytest.mark.parametrize("populated", [False, True], ids=["empty", "with-key-and-database"])
def test_a_read_only_data_directory_is_one_line(tmp_path, populated):
    data = tmp_path / "var"
    data.mkdir()
    if populated:
        run_cli("label", "emit", SUBJECT, "porn", env=env_for(data))
    read_only = f"mount --bind {data} {data}; mount -o remount,bind,ro {data}"
    proc = run_mounted(read_only, data, "serve")
    assert_one_line(proc, str(data), "read-only file system", "--data-dir")


@needs_mounts
def test_a_full_disk_is_one_line(tmp_path):
    data = tmp_path / "var"
    data.mkdir()
    py = shlex.join([sys.executable, "-m", "firehose_mod"])
    setup = (f"mount -t tmpfs -o size=1m tmpfs {data}; {py} label emit {SUBJECT} porn >/dev/null; "
             f"dd if=/dev/zero of={data}/filler bs=4k 2>/dev/null || true")
    proc = run_mounted(setup, data, "label", "emit", SUBJECT, "spam")
    assert_one_line(proc, "no space left", str(data))
    empty = run_mounted(f"mount -t tmpfs -o size=1m tmpfs {data}; dd if=/dev/zero of={data}/filler bs=4k 2>/dev/null"
                        " || true", data, "serve")
    assert_one_line(empty, "no space left", str(data))


def test_a_misspelled_environment_variable_names_the_real_one(tmp_path):
    proc = run_cli("key", "show", env=env_for(tmp_path / "var", FIREHOSE_MOD_DATADIR="/srv/x"), check=False)
    assert_one_line(proc, "FIREHOSE_MOD_DATADIR", "did you mean FIREHOSE_MOD_DATA_DIR?")


def test_global_options_work_after_the_command(tmp_path):
    config = tmp_path / "labeler.toml"
    config.write_text('[labeler]\ndid = "did:web:after.example"\n')
    data = tmp_path / "elsewhere"
    env = env_for(tmp_path / "var")
    created = run_cli("key", "create", "--data-dir", str(data), env=env).stdout.strip()
    shown = run_cli("key", "show", "--json", "--config", str(config), "--data-dir", str(data), env=env).stdout
    assert '"did:web:after.example"' in shown and created in shown
    before = run_cli("--data-dir", str(data), "key", "show", env=env).stdout.strip()
    assert before == created and not (tmp_path / "var").exists()


def test_key_show_in_an_empty_or_wrong_data_directory_creates_nothing(tmp_path):
    data = tmp_path / "typo"
    proc = run_cli("key", "show", env=env_for(data), check=False)
    assert_one_line(proc, f"no signing key at {data / 'signing.key'}", "firehose-mod key create", "firehose-mod run")
    assert not data.exists()
    did_key = run_cli("key", "create", env=env_for(data)).stdout.strip()
    assert run_cli("key", "show", env=env_for(data)).stdout.strip() == did_key
    again = run_cli("key", "create", env=env_for(data), check=False)
    assert_one_line(again, "already exists")
    assert run_cli("key", "show", env=env_for(data)).stdout.strip() == did_key


def test_output_into_a_closed_pipe_is_no_traceback(tmp_path):
    from tests.procs import free_port, start_server

    port = free_port()
    env = env_for(tmp_path / "var", port)
    server = start_server(env, port)
    try:
        # The reader is gone before the first line is written, as `status | head -1` can be.
        reader_gone = subprocess.Popen([sys.executable, "-m", "firehose_mod", "status"], env=env,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        reader_gone.stdout.close()
        err = reader_gone.stderr.read()
        assert reader_gone.wait(timeout=30) == 1
        assert "Traceback" not in err and "BrokenPipeError" not in err, err
    finally:
        server.terminate()
        server.wait(timeout=10)
