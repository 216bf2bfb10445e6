"""The signing key file: private, well-formed, and on disk before a label is signed with it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from firehose_mod.labels import SigningKey
from firehose_mod.labels.signing import KeyError_

from tests.procs import env_for, run_cli

GOOD_HEX = "3f" * 32


def write_key(path, value, mode=0o600) -> None:
    path.write_text(json.dumps({"curve": "secp256k1", "private_key_hex": value}))
    path.chmod(mode)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660], ids=oct)
def test_a_key_readable_by_group_or_others_is_refused_with_the_chmod_to_run(tmp_path, mode):
    path = tmp_path / "signing.key"
    write_key(path, GOOD_HEX, mode)
    with pytest.raises(KeyError_) as info:
        SigningKey.load(path)
    assert f"chmod 600 {path}" in str(info.value) and oct(mode)[2:] in str(info.value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (12345, "a JSON number"),
        ("0x" + GOOD_HEX[2:], "without 0x"),
        ("abc", "64 hex characters"),
        ("zz" * 32, "64 hex characters"),
        ("0" * 64, "out of range"),
        ("f" * 64, "out of range"),
    ],
)
def test_a_malformed_key_is_a_clear_error(tmp_path, value, message):
    path = tmp_path / "signing.key"
    write_key(path, value)
    with pytest.raises(KeyError_) as info:
        SigningKey.load(path)
    assert message in str(info.value) and str(path) in str(info.value)


def test_a_well_formed_key_loads(tmp_path):
    path = tmp_path / "signing.key"
    write_key(path, GOOD_HEX.upper())
    assert SigningKey.load(path).private_hex() == GOOD_HEX


def test_a_world_readable_key_stops_a_command_in_one_line(tmp_path):
    path = tmp_path / "var" / "signing.key"
    path.parent.mkdir()
    write_key(path, GOOD_HEX, 0o644)
    proc = run_cli("label", "emit", "at://did:plc:ewvi7nxzyoun6zhxrhs64oiz/fm.plyr.track/3kabc", "porn",
                   env=env_for(tmp_path / "var"), check=False)
    assert proc.returncode == 2 and f"chmod 600 {path}" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


SAVE_WITHOUT_FSYNC = """
import errno, sys
from pathlib import Path
from tests.test_systemd_sandbox import ALLOW, Seccomp, errno_action
f = Seccomp(ALLOW)
for name in ("fsync", "fdatasync"):
    f.rule(errno_action(errno.EIO), name)
f.load()
from firehose_mod.labels import SigningKey
from firehose_mod.labels.signing import KeyError_
try:
    SigningKey.load_or_create(Path(sys.argv[1]))
except KeyError_ as exc:
    print(exc)
"""


def test_a_new_key_is_synced_to_disk_before_it_is_used(tmp_path):
    """fsync fails here (seccomp makes it EIO): the key must not be used, nor left half-written."""
    try:
        import ctypes

        ctypes.CDLL("libseccomp.so.2")
    except OSError:
        pytest.skip("libseccomp.so.2 is not installed (Debian: apt-get install libseccomp2)")
    path = tmp_path / "var" / "signing.key"
    proc = subprocess.run([sys.executable, "-c", SAVE_WITHOUT_FSYNC, str(path)], capture_output=True, text=True,
                          timeout=30, cwd=Path(__file__).parent.parent)
    assert proc.returncode == 0, proc.stderr
    assert "cannot write signing key" in proc.stdout and "Input/output error" in proc.stdout
    assert list(path.parent.iterdir()) == []  # neither the key nor a temporary file
