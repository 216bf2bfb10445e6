"""The labeler account: its app password, and an atproto SDK session on its PDS.

`declare --apply` (the app.bsky.labeler.service record) and the transparency poster (summary
posts) write to the labeler account's repo. Both log in the same way: as `[labeler] handle`
(default: the DID) with the app password (`FIREHOSE_MOD_LABELER_APP_PASSWORD` or `[labeler]
app_password_file`, mode 600; never logged), through the atproto SDK over our vetted transport
(no proxy from the environment, no address `[media] allow_networks` does not open), and check the
session is the labeler's DID before anything is written.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from firehose_mod.config import Settings
from firehose_mod.scan.netguard import UnsafeAddress, VettedTransport, allowed_networks, parse_networks

APP_PASSWORDS = "Bluesky: Settings > Privacy and security > App passwords"


class AccountError(Exception):
    """The labeler account cannot be used; the message says what to fix. `refused`: the PDS
    refused the credentials (retrying will not help until someone fixes them)."""

    def __init__(self, message: str, *, refused: bool = False):
        super().__init__(message)
        self.refused = refused


def app_password(settings: Settings, needed_by: str = "--apply") -> str:
    """The labeler account's app password, from the environment/config or its file (mode 600)."""
    if settings.labeler_app_password:
        return settings.labeler_app_password
    path = settings.labeler_app_password_file
    if path is not None:
        try:
            mode = path.stat().st_mode & 0o777
            text = path.read_text().strip()
        except OSError as exc:
            raise AccountError(f"cannot read the app password file {path}: {exc.strerror}") from None
        if mode & 0o077:
            raise AccountError(f"the app password file {path} is readable by group or others (mode {mode:o});"
                               f" run: chmod 600 {path}")
        if text:
            return text
        raise AccountError(f"the app password file {path} is empty")
    raise AccountError(f"{needed_by} logs in to the labeler account and needs its app password: set"
                       " FIREHOSE_MOD_LABELER_APP_PASSWORD, or [labeler] app_password_file to a file holding it"
                       f" ({APP_PASSWORDS})")


@asynccontextmanager
async def labeler_client(settings: Settings, pds: str, *, needed_by: str = "--apply",
                         nothing: str = "nothing was written", timeout: float = 30.0) -> AsyncIterator:
    """An atproto SDK `AsyncClient` on `pds`, logged in to the labeler account; AccountError when
    the login fails or lands in another account (`nothing` ends those messages)."""
    from atproto_client import AsyncClient
    from atproto_client.exceptions import AtProtocolError
    from atproto_client.request import AsyncRequest

    password = app_password(settings, needed_by)
    login = settings.labeler_handle or settings.did
    # The SDK's HTTP client, with our vetted transport: no proxy from the environment, no
    # connection to an address [media] allow_networks does not open.
    request = AsyncRequest(transport=VettedTransport(allow=parse_networks(allowed_networks(settings))),
                           trust_env=False, timeout=timeout)
    client = AsyncClient(base_url=pds, request=request)
    sessions: list = []
    client.on_session_change(lambda _event, session: sessions.append(session))
    try:
        try:
            try:
                await client.login(login, password, fetch_bsky_profile=False)
            except TypeError:  # an atproto SDK from before fetch_bsky_profile
                await client.login(login, password)
        except (AtProtocolError, UnsafeAddress) as exc:
            status = sdk_status(exc)
            if status in (400, 401):
                raise AccountError(f"the PDS {pds} refused the app password for {login} ({sdk_error(exc)}); {nothing}."
                                   " Check [labeler] handle and the app password"
                                   f" (FIREHOSE_MOD_LABELER_APP_PASSWORD or [labeler] app_password_file; {APP_PASSWORDS})",
                                   refused=True) from None
            raise AccountError(f"cannot log in to the PDS {pds}: {sdk_error(exc)}; {nothing}") from None
        session_did = getattr(sessions[-1], "did", None) if sessions else None
        if session_did != settings.did:
            raise AccountError(f"{login} logged in as {session_did}, not the labeler {settings.did}; {nothing}:"
                               " set [labeler] handle to the labeler account's handle", refused=True)
        yield client
    finally:
        await request.close()


def sdk_status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def sdk_error(exc: BaseException) -> str:
    """`401 AuthenticationRequired: Invalid identifier or password`, from an SDK error."""
    response = getattr(exc, "response", None)
    content = getattr(response, "content", None)
    parts = [str(getattr(content, k, "") or "") for k in ("error", "message")]
    text = ": ".join(p for p in parts if p)
    status = getattr(response, "status_code", None)
    if status is not None:
        return f"HTTP {status} {text}".strip()
    return f"{type(exc).__name__}: {exc}"[:300]
