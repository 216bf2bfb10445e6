"""The atproto reference PDS for tests: `@atproto/dev-env`'s TestNetworkNoAppView, run by Node.

    async with reference_pds(tmp_path) as net:      # a PLC directory (in memory) and a PDS (SQLite)
        alice = await create_account(net, "alice")  # did:plc:..., alice.test
        audio = await alice.upload(mp3_bytes, "audio/mpeg")
        cover = await alice.upload(png_bytes, "image/png")
        uri, cid = await alice.create_track(track("Title", audio=audio, cover=cover))
        settings = net.daemon_settings(settings)    # follow the PDS's own subscribeRepos

`tests/refpds/network.js` starts the network and prints one JSON line with its URLs; it stops
when its stdin closes. Its Node dependencies live in `tests/refpds/node_modules` (installed by
`.ci/run`, about two minutes cold); without them `reference_pds` raises `RefPdsUnavailable` with
the install command, and the tests fail: never a silent skip.

The PDS does not know `fm.plyr.track`, so records are written with `validate: false`, as
plyr.fm's own backend writes them. Blobs are kept by the PDS only while a record references
them (an unreferenced upload is temporary and `getBlob` never serves it): `track()` puts the
cover's blob in an `imageBlob` field (not in plyr.fm's lexicon: open records allow it) and
points `imageUrl` at the PDS's `getBlob` for it, which is what the labeler fetches covers from.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import anyio
import anyio.abc

from firehose_mod.config import Settings

REFPDS_DIR = Path(__file__).parent / "refpds"
NETWORK_JS = REFPDS_DIR / "network.js"
INSTALL = "(cd tests/refpds && npm_config_nodedir=/usr npm ci --no-audit --no-fund), or run `bash .ci/run`"
START_TIMEOUT = 90.0  # seconds for the PLC and the PDS to answer (3-5 s when warm)
STOP_TIMEOUT = 15.0
TRACK = "fm.plyr.track"
PASSWORD = "hunter2-but-longer"


class RefPdsUnavailable(RuntimeError):
    """Node or the reference PDS's packages are missing, or the network did not start."""


def check_installed() -> str:
    """The path of `node`, once the reference PDS's packages are installed; else RefPdsUnavailable."""
    node = shutil.which("node")
    if node is None:
        raise RefPdsUnavailable("node is not on PATH: the reference-PDS tests need Node.js 20 or later")
    if not (REFPDS_DIR / "node_modules" / "@atproto" / "dev-env" / "package.json").is_file():
        raise RefPdsUnavailable(f"the reference PDS is not installed in {REFPDS_DIR}/node_modules: {INSTALL}")
    return node


@dataclass(frozen=True)
class RefNetwork:
    """A running reference network: what network.js printed."""

    pds: str  # http://localhost:PORT, the #atproto_pds endpoint in every DID document it creates
    plc: str  # http://localhost:PORT
    info: dict[str, Any] = field(repr=False)
    log_file: Path = field(repr=False)

    @property
    def pds_ws(self) -> str:
        return "ws://" + self.pds.removeprefix("http://")

    def handle(self, name: str) -> str:
        return name + self.info["handleDomains"][0]

    def daemon_settings(self, settings: Settings, **changes: Any) -> Settings:
        """`settings` for a labeler that follows this PDS's subscribeRepos and resolves DIDs through
        this PLC, with loopback opened by the operator setting (the SSRF guard stays on otherwise)."""
        return replace(settings, ingest_source="firehose", relay_endpoints=(self.pds_ws,), plc_url=self.plc,
                       media_allow_loopback_for_testing_only=True, media_allow_http=True, **changes)

    def cli_env(self) -> dict[str, str]:
        """The same settings as FIREHOSE_MOD_* variables, for `firehose-mod` subprocesses."""
        return {
            "FIREHOSE_MOD_INGEST_SOURCE": "firehose",
            "FIREHOSE_MOD_RELAY_ENDPOINTS": self.pds_ws,
            "FIREHOSE_MOD_PLC_URL": self.plc,
            "FIREHOSE_MOD_MEDIA_ALLOW_LOOPBACK_FOR_TESTING_ONLY": "true",
            "FIREHOSE_MOD_MEDIA_ALLOW_HTTP": "true",
        }

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


@asynccontextmanager
async def reference_pds(workdir: Path, *, timeout: float = START_TIMEOUT) -> AsyncIterator[RefNetwork]:
    """Start network.js (its temporary files under `workdir`), yield its URLs, stop it on exit."""
    node = check_installed()
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = workdir / "tmp"  # the PDS's SQLite files and blobs (os.tmpdir() in dev-env)
    tmp.mkdir(exist_ok=True)
    out_path, log_path = workdir / "network.out", workdir / "network.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOG_", "PDS_", "REFPDS_"))}
    env.update(TMPDIR=str(tmp), NODE_ENV="test", LOG_ENABLED="false")
    with out_path.open("wb") as out, log_path.open("wb") as err:  # the child keeps its own descriptors
        proc = await anyio.open_process([node, str(NETWORK_JS)], cwd=REFPDS_DIR, env=env, stdin=subprocess.PIPE,
                                        stdout=out, stderr=err)
    try:
        info = await _wait_for_info(proc, out_path, log_path, timeout)
        yield RefNetwork(info["pds"], info["plc"], info, log_path)
    finally:
        with anyio.CancelScope(shield=True):
            await _stop(proc)


async def _wait_for_info(proc: anyio.abc.Process, out_path: Path, log_path: Path, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        for line in out_path.read_text(errors="replace").splitlines():
            if line.startswith('{"refpds"'):
                return json.loads(line)
        if proc.returncode is not None:
            raise RefPdsUnavailable(f"network.js exited {proc.returncode} before it was ready:\n"
                                    f"{log_path.read_text(errors='replace')[-3000:]}")
        if time.monotonic() > deadline:
            raise RefPdsUnavailable(f"network.js was not ready in {timeout:g} s:\n"
                                    f"{log_path.read_text(errors='replace')[-3000:]}")
        await anyio.sleep(0.05)


async def _stop(proc: anyio.abc.Process) -> None:
    """Close stdin (network.js then shuts down cleanly), else SIGTERM, else SIGKILL."""
    await proc.stdin.aclose()
    for escalate in (proc.terminate, proc.kill, None):
        with anyio.move_on_after(STOP_TIMEOUT):
            await proc.wait()
            return
        if escalate is not None:
            escalate()


# -- accounts and records, through the atproto SDK --------------------------------------------------
def blob_url(pds: str, did: str, cid: str) -> str:
    return f"{pds}/xrpc/com.atproto.sync.getBlob?{urlencode({'did': did, 'cid': cid})}"


@dataclass
class Blob:
    """An uploaded blob: its record form (`$type: blob`, `ref.$link`, mimeType, size) and its URL."""

    json: dict
    url: str

    @property
    def cid(self) -> str:
        return self.json["ref"]["$link"]


@dataclass
class Account:
    net: RefNetwork
    did: str
    handle: str
    client: Any  # atproto AsyncClient, logged in

    async def upload(self, data: bytes, mime_type: str) -> Blob:
        """com.atproto.repo.uploadBlob (the PDS sniffs the type; `mime_type` is the fallback)."""
        resp = await self.client.com.atproto.repo.upload_blob(data, headers={"Content-Type": mime_type})
        blob = resp.blob
        record = {"$type": "blob", "ref": {"$link": str(blob.ref.link)}, "mimeType": blob.mime_type,
                  "size": blob.size}
        return Blob(record, blob_url(self.net.pds, self.did, record["ref"]["$link"]))

    async def create_track(self, record: dict, rkey: str | None = None) -> tuple[str, str]:
        """createRecord with validate: false; (uri, cid). Without `rkey` the PDS makes a TID."""
        from atproto import models

        resp = await self.client.com.atproto.repo.create_record(models.ComAtprotoRepoCreateRecord.Data(
            repo=self.did, collection=TRACK, record=record, rkey=rkey, validate=False))
        return resp.uri, resp.cid

    async def put_track(self, rkey: str, record: dict) -> tuple[str, str]:
        from atproto import models

        resp = await self.client.com.atproto.repo.put_record(models.ComAtprotoRepoPutRecord.Data(
            repo=self.did, collection=TRACK, rkey=rkey, record=record, validate=False))
        return resp.uri, resp.cid

    async def delete_track(self, rkey: str) -> None:
        from atproto import models

        await self.client.com.atproto.repo.delete_record(models.ComAtprotoRepoDeleteRecord.Data(
            repo=self.did, collection=TRACK, rkey=rkey))

    async def touch(self) -> None:
        """A write of another collection (the profile), so the PDS emits a commit nobody scans."""
        from atproto import models

        await self.client.com.atproto.repo.put_record(models.ComAtprotoRepoPutRecord.Data(
            repo=self.did, collection="app.bsky.actor.profile", rkey="self",
            record={"$type": "app.bsky.actor.profile", "displayName": f"{self.handle} {time.monotonic():.3f}"}))


async def create_account(net: RefNetwork, name: str) -> Account:
    """com.atproto.server.createAccount (dev-env needs no invite), then a session for it."""
    from atproto import AsyncClient, models

    if net.info.get("inviteRequired"):
        raise RefPdsUnavailable("this PDS requires invites; dev-env's does not: check network.js")
    handle = net.handle(name)
    client = AsyncClient(base_url=net.pds)
    created = await client.com.atproto.server.create_account(models.ComAtprotoServerCreateAccount.Data(
        handle=handle, email=f"{name}@example.test", password=PASSWORD))
    await client.login(handle, PASSWORD, fetch_bsky_profile=False)
    return Account(net, created.did, handle, client)


def track(title: str, *, audio: Blob | None = None, cover: Blob | None = None, artist: str = "Ref Artist",
          **extra: Any) -> dict:
    """An `fm.plyr.track` record: audio as `audioBlob`; the cover as `imageUrl` (the PDS's getBlob)
    plus its blob in `imageBlob`, so the PDS keeps it while the record references it."""
    record: dict[str, Any] = {"$type": TRACK, "title": title, "artist": artist, "fileType": "mp3",
                              "createdAt": "2026-12-01T10:00:00.000Z", "duration": 45}
    if audio is not None:
        record["audioBlob"] = audio.json
    if cover is not None:
        record["imageUrl"] = cover.url
        record["imageBlob"] = cover.json
    record.update(extra)
    return record


async def until_following(source: Any, account: Account, timeout: float = 30.0) -> None:
    """Wait until the daemon's firehose source reads the PDS (a fresh daemon starts live: what
    the PDS sequenced before it connected is not sent), poking the PDS with profile writes."""
    with anyio.fail_after(timeout):
        while source.stats.frames == 0:
            await account.touch()
            with anyio.move_on_after(1.0):
                while source.stats.frames == 0:
                    await anyio.sleep(0.05)
