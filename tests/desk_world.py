"""A running daemon whose review desk has one waiting item of each kind, for the admin page's tests.

    async with desk_world(settings, tmp_path) as w:
        w.base_url                      # http://127.0.0.1:PORT, the daemon's front door
        w.tokens["mod"]                 # bearer tokens: alice (admin), mod (moderator), bot (agent)
        w.items["copyright"]            # review item ids: copyright, cover-art, text
        w.auth("mod")                   # {"Authorization": "Bearer ..."}

Nothing is faked past the network edge. The operators are added with `firehose-mod operator
add` and the reference recording with `firehose-mod catalogue add`, as an operator would;
then the real daemon (`run_daemon`) reads five `fm.plyr.track` records from a local Jetstream,
fetches their audio and covers over HTTP from a local media host, scans them with the default
scanners and the built-in policy, and the policy opens the items:

- copyright: "Midnight Drive" embeds 14 s of the catalogued "Golden Hour" in a song of its
  own. The policy labels a reference match of 30 s or more by itself (`catalogue-match`);
  from 8 s it asks a person (`catalogue-partial-match`), which is what 14 s gets.
- cover-art: "Skin"'s cover is an abstract picture of blurred skin-toned shapes (safe to show)
  that open_nsfw scores about 0.71: between `cover-doubtful` (0.6, review) and `cover-sexual`
  (0.85, label), so a person looks at it.
- text: "Last Words"'s description ends with "kys", a term on the operator's text blocklist
  (`text-blocklist`: review as offensive-text). Built-in list hits could do this too (slurs),
  but this keeps slurs out of the screenshots.
- nothing: "Glass Harbour" (clean) and "Shit Happens" (profanity in the title: a text finding
  the policy ignores, `text-profanity`; explicit titles are legitimate).

Everything is seeded: the same audio, covers, words, DIDs, handles and item ids (copyright 1,
cover-art 2, text 3) on every run. What differs between runs: the ports (the media host's is in
the records' audioUrl/imageUrl, so their CIDs change too), timestamps, tokens, and the catalogue
ref, which is the imported file's path (`file:/tmp/.../label-catalogue/golden-hour.flac`). The
media is built once per test process (about 3 s) and reused by later worlds.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from firehose_mod.config import Settings
from firehose_mod.daemon import run_daemon
from firehose_mod.store.review import ItemQuery, ReviewItem

from tests import media as M
from tests.fakes.jetstream import T0, FakeJetstream, commit, identity, track_record
from tests.fakes.media_server import MediaServer
from tests.procs import env_for, run_cli
from tests.test_cover import artwork

KINDS = ("copyright", "cover-art", "text")  # the items the world opens, one of each
READY_TIMEOUT = 120.0  # seconds for every scan to finish (5-8 s here, media built once a process)

# The catalogued recording and where the copy took its excerpt from (seconds).
REFERENCE = {"seed": 101, "seconds": 45.0, "title": "Golden Hour", "artist": "Major Label Artist"}
EXCERPT_FROM, EXCERPT_SECONDS, EMBED_AT = 10.0, 14.0, 12.0

# A picture open_nsfw scores ~0.71 (found by a seeded hill climb on its score): ellipses
# (x, y, w, h, r, g, b) on a 256-unit canvas, drawn at 512 px on dark brown and blurred.
DOUBTFUL_COVER_SHAPES = (
    (-35, 170, 117, 99, 207, 148, 145), (34, 214, 38, 71, 196, 149, 114), (167, 10, 86, 47, 225, 137, 112),
    (129, 135, 68, 68, 200, 136, 163), (5, 193, 173, 156, 178, 137, 127), (204, 15, 109, 157, 176, 147, 137),
    (196, 18, 75, 85, 182, 133, 115), (186, 163, 131, 145, 149, 112, 105),
)
TEXT_BLOCKLIST = "term kys  # harassment: 'kill yourself'\n"


@dataclass(frozen=True)
class Upload:
    """One track in the world: who posts it, its record's words, its audio and cover."""

    name: str  # the world's key for it: copyright, cover-art, text, clean, explicit
    did: str
    handle: str
    rkey: str
    title: str
    artist: str
    song_seed: int
    seconds: float
    cover: str  # "artwork:SEED" or "doubtful"
    description: str | None = None
    album: str | None = None

    @property
    def uri(self) -> str:
        return f"at://{self.did}/fm.plyr.track/{self.rkey}"


UPLOADS = (
    Upload("copyright", "did:plc:m3kqyd5tj2w7rxv4pl6naz2c", "nightjar.bsky.social", "3lcopyright0a",
           "Midnight Drive", "Nightjar", 303, 40.0, "artwork:21",
           description="made this last night, all original!! headphones on", album="Night Moves"),
    Upload("cover-art", "did:plc:v7e2lq4xoh3ubmz6ydkc5nfr", "velvetstatic.bsky.social", "3lcoverart00a",
           "Skin", "Velvet Static", 404, 30.0, "doubtful", description="new single, cover by a friend"),
    Upload("text", "did:plc:g5wzp2nhq7ckx4tbm3ravy6e", "grudgecore.bsky.social", "3ltext000000a",
           "Last Words", "grudgecore", 505, 30.0, "artwork:23",
           description="to everyone who hated my last track: kys"),
    Upload("clean", "did:plc:t2hnc6rzwq5yxe3bkpmv7ola", "tidewater.bsky.social", "3lclean00000a",
           "Glass Harbour", "Tidewater", 606, 30.0, "artwork:24", description="field recordings from the pier",
           album="Low Tide"),
    Upload("explicit", "did:plc:b6yxk3ofm2vnzq7cheur4tws", "ordinarydisasters.bsky.social", "3lexplicit00a",
           "Shit Happens", "The Ordinary Disasters", 707, 30.0, "artwork:25"),
)


@dataclass
class DeskWorld:
    base_url: str  # the daemon's front door: /admin/..., /xrpc/..., /.well-known/did.json
    tokens: dict[str, str]  # alice (admin), mod (moderator), bot (agent)
    items: dict[str, int]  # kind -> the id of the review item the scans opened
    media: MediaServer  # serving /audio/NAME.mp3 and /covers/NAME.png (NAME as in `uris`)
    parts: dict[str, Any]  # run_daemon's parts: server, store, engine, review, workers, source, pipeline
    settings: Settings
    jetstream: FakeJetstream  # append() more events to feed the running daemon
    uris: dict[str, str]  # copyright, cover-art, text, clean, explicit -> track at-uri
    reference: str  # the catalogue ref of "Golden Hour"
    uploads: dict[str, Upload] = field(default_factory=dict)  # the same keys as `uris`
    ready_seconds: float = 0.0  # from entering desk_world to every item open

    def auth(self, who: str) -> dict[str, str]:
        """The Authorization header of operator `who` (alice, mod or bot)."""
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    @property
    def port(self) -> int:
        return self.parts["server"].port

    async def item(self, kind: str) -> ReviewItem:
        """The item of `kind` as it stands now (read from the ReviewStore)."""
        return (await self.parts["review"].store.items([self.items[kind]]))[self.items[kind]]


# -- media: built once per process, deterministic -------------------------------------------------
def doubtful_cover() -> Image.Image:
    k = 2  # 256-unit shapes drawn at 512 px
    img = Image.new("RGB", (512, 512), (60, 40, 35))
    draw = ImageDraw.Draw(img)
    for x, y, w, h, r, g, b in DOUBTFUL_COVER_SHAPES:
        draw.ellipse((x * k, y * k, (x + w) * k, (y + h) * k), fill=(r, g, b))
    return img.filter(ImageFilter.GaussianBlur(6 * k))


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _mp3(x: np.ndarray, work: Path, name: str, kbps: int = 128) -> bytes:
    wav = M.write_wav(work / f"{name}.wav", x)
    return M.mp3(wav, work / f"{name}.mp3", kbps=kbps).read_bytes()


@lru_cache(maxsize=1)
def world_media() -> dict[str, tuple[bytes, str]]:
    """{path on the media host: (bytes, content type)}, plus "reference.flac" for the catalogue."""
    import tempfile

    out: dict[str, tuple[bytes, str]] = {}
    with tempfile.TemporaryDirectory(prefix="desk-world-") as tmp:
        work = Path(tmp)
        reference = M.song(REFERENCE["seed"], REFERENCE["seconds"])
        wav = M.write_wav(work / "reference.wav", reference)
        flac = M.ffmpeg(wav, work / "reference.flac", "-metadata", f"title={REFERENCE['title']}",
                        "-metadata", f"artist={REFERENCE['artist']}")
        out["reference.flac"] = (flac.read_bytes(), "audio/flac")
        for u in UPLOADS:
            x = M.song(u.song_seed, u.seconds)
            if u.name == "copyright":  # a song of its own with the reference's excerpt spliced in
                x = M.embed(x, M.excerpt(reference, EXCERPT_FROM, EXCERPT_SECONDS), EMBED_AT)
            out[f"/audio/{u.name}.mp3"] = (_mp3(x, work, u.name), "audio/mpeg")
            cover = doubtful_cover() if u.cover == "doubtful" else artwork(int(u.cover.split(":")[1]), (600, 600))
            out[f"/covers/{u.name}.png"] = (_png(cover), "image/png")
    return out


def _record(u: Upload, base: str) -> dict:
    extra = {k: v for k, v in (("description", u.description), ("album", u.album)) if v}
    return track_record(u.title, u.artist, audioUrl=f"{base}/audio/{u.name}.mp3",
                        imageUrl=f"{base}/covers/{u.name}.png", duration=int(u.seconds),
                        createdAt="2026-11-24T10:00:00.000Z", **extra)


# -- operators and the catalogue, through the CLI ----------------------------------------------------
def _add_operators(env: dict) -> dict[str, str]:
    """alice (the first admin: the bootstrap path), then mod and bot added by alice."""
    tokens = {}
    for name, role, acting in (("alice", "admin", None), ("mod", "moderator", "alice"), ("bot", "agent", "alice")):
        args = ["operator", "add", name, "--role", role, "--json"] + (["--as", acting] if acting else [])
        tokens[name] = json.loads(run_cli(*args, env=env).stdout)["token"]
    return tokens


def _catalogue_reference(env: dict, catalogue_dir: Path) -> str:
    catalogue_dir.mkdir(parents=True, exist_ok=True)
    (catalogue_dir / "golden-hour.flac").write_bytes(world_media()["reference.flac"][0])
    added = json.loads(run_cli("catalogue", "add", str(catalogue_dir), "--json", env=env, timeout=120).stdout)
    if len(added["added"]) != 1 or added["failed"]:
        raise AssertionError(f"catalogue add: {added}")
    return added["added"][0]


# -- the world -----------------------------------------------------------------------------------
@asynccontextmanager
async def desk_world(settings: Settings, tmp_path: Path, *, timeout: float = READY_TIMEOUT
                     ) -> AsyncIterator[DeskWorld]:
    """The running daemon once every upload is scanned and the three items are open."""
    started = time.monotonic()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    env = env_for(settings.data_dir)
    blocklist = tmp_path / "text-blocklist.txt"
    blocklist.write_text(TEXT_BLOCKLIST)
    tokens: dict[str, str] = {}
    async with anyio.create_task_group() as prep:  # the CLI's operators while the media is built
        async def operators() -> None:
            tokens.update(await anyio.to_thread.run_sync(_add_operators, env))

        prep.start_soon(operators)
        await anyio.to_thread.run_sync(world_media)
    reference = await anyio.to_thread.run_sync(_catalogue_reference, env, tmp_path / "label-catalogue")

    media = MediaServer()
    with media:
        media.files.update({k: v for k, v in world_media().items() if k.startswith("/")})
        events: list[dict] = [
            commit(T0 + i * 1_000, u.did, "fm.plyr.track", u.rkey, "create", _record(u, media.base))
            for i, u in enumerate(UPLOADS)
        ]
        events += [identity(T0 + 100_000 + i, u.did, u.handle) for i, u in enumerate(UPLOADS)]
        jetstream = FakeJetstream(events)
        not_ready: str | None = None
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(jetstream.serve)
                settings = replace(
                    settings, jetstream_endpoints=(jetstream.url,), jetstream_compress=False,
                    scanners=("self-labels", "text", "cover-art", "copyright"), cover_nsfw=True,
                    text_blocklist=blocklist, media_allow_networks=("127.0.0.1/32",), media_allow_http=True,
                    scan_workers=1,  # one scan at a time: the items open in upload order, ids 1, 2, 3 every run
                )
                parts = await tg.start(run_daemon, settings)
                items = await _wait_for_items(parts, timeout)
                if isinstance(items, str):
                    not_ready = items
                    tg.cancel_scope.cancel()
                else:
                    try:
                        yield DeskWorld(
                            base_url=f"http://127.0.0.1:{parts['server'].port}", tokens=tokens, items=items,
                            media=media, parts=parts, settings=settings, jetstream=jetstream,
                            uris={u.name: u.uri for u in UPLOADS}, reference=reference,
                            uploads={u.name: u for u in UPLOADS}, ready_seconds=time.monotonic() - started,
                        )
                    finally:
                        tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # The task group wraps what the test raised in its block (an assertion, say): unwrap one.
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
    if not_ready is not None:
        raise AssertionError(not_ready)


async def _wait_for_items(parts: dict, timeout: float) -> dict[str, int] | str:
    """{kind: item id} once every upload's scan is done and each kind's item is open; else what was missing."""
    store, review = parts["store"], parts["review"]
    kind_of = {u.uri: u.name for u in UPLOADS if u.name in KINDS}
    with anyio.move_on_after(timeout):
        while True:
            counts = await store.counts()
            found = {kind_of[i.uri]: i for i in await review.store.query(ItemQuery(limit=1000))
                     if kind_of.get(i.uri) == i.kind}
            if counts["done"] >= len(UPLOADS) and set(found) == set(KINDS):
                return {kind: found[kind].id for kind in KINDS}
            await anyio.sleep(0.1)
    return f"the desk world was not ready in {timeout:g} s: {await _diagnose(parts)}"


async def _diagnose(parts: dict) -> str:
    store, engine, review = parts["store"], parts["engine"], parts["review"]
    lines = [f"jobs {await store.counts()}"]
    for i in await review.store.query(ItemQuery(limit=1000)):
        lines.append(f"item #{i.id} {i.kind} {i.value} {i.uri}")
    for u in UPLOADS:
        jobs = await store.jobs(u.uri)
        history = [(h["action"], h.get("rule")) for h in await engine.decisions.history(u.uri)]
        lines.append(f"{u.name}: jobs {[(j['state'], j['error']) for j in jobs]} decisions {history}")
    return "\n  ".join(lines)
