"""Who may use the operator endpoints (`/admin/...`): the holder of the operator token.

The token is a random string in `admin.token` in the data directory, created mode 0600 on the
server's first start and never logged: whoever can read the data directory is the operator
(`firehose-mod status` reads it there and sends `Authorization: Bearer <token>`). Being on
loopback proves nothing behind a same-host proxy, so it is not a credential here.

`is_operator` checks this token; `LabelServer._require_operator` also accepts a named admin's or
moderator's token (`firehose-mod operator add`).
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from aiohttp import web

TOKEN_FILE = "admin.token"


def token_path(data_dir: Path) -> Path:
    return data_dir / TOKEN_FILE


def load_or_create_token(data_dir: Path) -> str:
    """The operator token of `data_dir`, created (0600, 256 random bits) when there is none."""
    path = token_path(data_dir)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        token = path.read_text().strip()
        if not token:
            raise ValueError(f"{path} is empty: delete it and restart to get a new operator token") from None
        return token
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def read_token(data_dir: Path) -> str | None:
    """The operator token for a client on this machine (`firehose-mod status`), or None."""
    try:
        return token_path(data_dir).read_text().strip() or None
    except OSError:
        return None


def auth_header(data_dir: Path) -> dict[str, str]:
    """`Authorization: Bearer ...` for this data directory's server ({} when there is no token)."""
    token = read_token(data_dir)
    return {"Authorization": f"Bearer {token}"} if token else {}


def is_operator(request: web.Request, token: str | None) -> bool:
    """Whether `request` carries the operator credential."""
    if not token:
        return False
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())
