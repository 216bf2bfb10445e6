"""Running the real `firehose-mod` command as a subprocess, as an operator or systemd would."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_for(data_dir: Path, port: int | None = None, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIREHOSE_MOD_")}
    env["FIREHOSE_MOD_DATA_DIR"] = str(data_dir)
    env["FIREHOSE_MOD_STREAM_POLL_INTERVAL"] = "0.05"
    if port is not None:
        env["FIREHOSE_MOD_PORT"] = str(port)
    env.update(extra)
    return env


def operator_status(port: int, data_dir: Path) -> dict | None:
    """The daemon's /admin/status, or None while it is not answering yet. The operator token is
    read only after the server answered: the daemon writes it before it listens, so a token read
    earlier may be missing (and a request sent with none is refused, not retried)."""
    import httpx

    from firehose_mod.server.admin import auth_header

    base = f"http://127.0.0.1:{port}"
    try:
        httpx.get(base + "/xrpc/_health", timeout=2).raise_for_status()
        response = httpx.get(base + "/admin/status", timeout=5, headers=auth_header(data_dir))
    except httpx.HTTPError:
        return None
    assert response.status_code == 200, (response.status_code, response.text)
    return response.json()


def run_cli(*args: str, env: dict, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "firehose_mod", *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"firehose-mod {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


def start_server(env: dict, port: int) -> subprocess.Popen:
    """Start `firehose-mod serve` and wait until /xrpc/_health answers."""
    import httpx

    proc = subprocess.Popen(
        [sys.executable, "-m", "firehose_mod", "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited {proc.returncode}: {proc.stderr.read().decode()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/xrpc/_health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError("serve did not become healthy in 20 s")


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]
