"""End to end on the atproto reference PDS (tests/refpds.py): nothing between the labeler and the PDS is ours.

An account on a real PDS (@atproto/dev-env: the PDS on SQLite, a PLC directory in memory)
uploads real blobs and writes `fm.plyr.track` records through the atproto SDK. The daemon
follows the PDS's own `com.atproto.sync.subscribeRepos` with commit signatures checked
(`verify_commits`: real MST proofs, keys from the PLC document), resolves the DID through the
PLC, fetches the audio with `getBlob` and the cover from `imageUrl`, and labels: a copy of a
catalogued recording and a cover on the PDQ blocklist. An update that swaps the media and a
delete withdraw the labels. Then, with the daemon stopped, a new record is found by
`firehose-mod backfill --did` (listRecords on the PDS the PLC names) and scanned on restart.

Loopback is reached through `[media] allow_loopback_for_testing_only`, the operator setting;
the SSRF guard still refuses every other internal address (checked at the end).
"""

from __future__ import annotations

import io
import json
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace

import anyio
import anyio.to_thread
import pytest
from atproto import models
from structlog.testing import capture_logs

from firehose_mod.config import load_settings
from firehose_mod.daemon import run_daemon
from firehose_mod.scan.cover import CoverLimits, analyse_cover
from firehose_mod.scan.netguard import UnsafeAddress, allowed_networks, outbound_client, warn_if_opened

from tests import media as M
from tests.procs import env_for, run_cli
from tests.refpds import RefNetwork, check_installed, create_account, reference_pds, track, until_following
from tests.stream_client import Received, collect, subscribe
from tests.test_cover import artwork

pytestmark = pytest.mark.anyio

COPY, BLOCKED = "copyright-violation", "porn"


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    artwork(seed).save(buf, format="PNG")
    return buf.getvalue()


@asynccontextmanager
async def daemon(settings) -> AsyncIterator[dict]:
    """`run_daemon` until the block ends (cancelled as SIGTERM would)."""
    async with anyio.create_task_group() as tg:
        parts = await tg.start(run_daemon, settings)
        try:
            yield parts
        finally:
            tg.cancel_scope.cancel()


async def diagnose(parts: dict, net: RefNetwork, *uris: str) -> str:
    store, engine, source = parts["store"], parts["engine"], parts["source"]
    lines = [f"queue {await store.counts()}", f"source {source.stats.as_dict() if source else None}"]
    for uri in uris:
        lines.append(f"{uri}: jobs {[(j['operation'], j['state'], j['error']) for j in await store.jobs(uri)]}")
        history = await engine.decisions.history(uri)
        lines.append(f"  decisions {[(h['action'], h['value'], h['rule']) for h in history]}")
    for d in await store.dead_letters(10):
        lines.append(f"dead letter {d['reason']} {d['uri'] or d['did']}: {d['detail'][:300]}")
    lines.append(f"network.js stderr: {net.log_tail(1500)}")
    return "\n  ".join(lines)


async def labels_become(parts: dict, net: RefNetwork, uri: str, values: set[str], timeout: float = 90) -> None:
    """Wait until the labels in force on `uri` are `values` and its jobs are all done."""
    store, log = parts["store"], parts["engine"].label_log
    with anyio.move_on_after(timeout):
        while True:
            jobs = await store.jobs(uri)
            if (jobs and all(j["state"] == "done" for j in jobs)
                    and {x.val for x in await log.in_force(uri)} == values):
                return
            await anyio.sleep(0.1)
    in_force = sorted(x.val for x in await log.in_force(uri))
    raise AssertionError(f"{uri}: labels {in_force}, wanted {sorted(values)} within {timeout} s:\n  "
                         f"{await diagnose(parts, net, uri)}")


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 30) -> None:
    with anyio.move_on_after(timeout):
        while not await check():
            await anyio.sleep(0.1)
        return
    raise AssertionError(f"not within {timeout} s: {what}")


@pytest.mark.slow
async def test_labels_tracks_written_on_the_reference_pds_and_backfills_what_it_missed(settings, tmp_path):
    check_installed()  # fail now, with the install command, rather than after building the media
    # The operator's side: a catalogued recording, a PDQ blocklist entry.
    catalogue = tmp_path / "catalogue"
    catalogue.mkdir()
    reference = M.write_wav(catalogue / "hit-single.wav", M.song(101, 45))
    copy_mp3 = M.mp3(reference, tmp_path / "copy.mp3", kbps=32).read_bytes()
    own_mp3 = M.mp3(M.write_wav(tmp_path / "own.wav", M.song(202, 45)), tmp_path / "own.mp3", kbps=128).read_bytes()
    bad_png, clean_png = png(7), png(8)
    (tmp_path / "bad.png").write_bytes(bad_png)
    known_bad = analyse_cover(str(tmp_path / "bad.png"), CoverLimits(), None, True).pdq[0]
    (tmp_path / "pdq.txt").write_text(f"{known_bad} {BLOCKED}  # reported image\n")
    env = env_for(settings.data_dir)
    added = json.loads(run_cli("catalogue", "add", str(catalogue), "--json", env=env, timeout=120).stdout)
    assert len(added["added"]) == 1 and added["failed"] == []

    async with reference_pds(tmp_path / "refpds") as net:
        settings = net.daemon_settings(
            settings, verify_commits=True, scanners=("self-labels", "text", "cover-art", "copyright"),
            cover_nsfw=False, pdq_blocklist=tmp_path / "pdq.txt")
        async with daemon(settings) as parts:
            alice = await create_account(net, "alice")
            await until_following(parts["source"], alice)
            copy, own = await alice.upload(copy_mp3, "audio/mpeg"), await alice.upload(own_mp3, "audio/mpeg")
            bad, clean = await alice.upload(bad_png, "image/png"), await alice.upload(clean_png, "image/png")
            assert copy.json["mimeType"] == "audio/mpeg" and bad.json["mimeType"] == "image/png"

            # A copy of the catalogued recording with a blocklisted cover: two labels.
            first, first_cid = await alice.create_track(track("Totally Mine", audio=copy, cover=bad))
            await labels_become(parts, net, first, {COPY, BLOCKED})
            # Alice now has a track: her identity events are kept (a handle change on the PDS).
            renamed = net.handle("alice-renamed")
            await alice.client.com.atproto.identity.update_handle(
                models.ComAtprotoIdentityUpdateHandle.Data(handle=renamed))
            await eventually(lambda: _has_repo_event(settings, alice.did, "identity", renamed),
                             f"the #identity event of {alice.did} with handle {renamed}")
            # Own music, the same blocklisted cover: one.
            second, _ = await alice.create_track(track("Also Mine", audio=own, cover=bad))
            await labels_become(parts, net, second, {BLOCKED})
            # The first swaps both for clean media (putRecord): both labels are negated.
            first_rkey = first.rsplit("/", 1)[1]
            _, updated_cid = await alice.put_track(first_rkey, track("Totally Mine", audio=own, cover=clean))
            await labels_become(parts, net, first, set())
            # The second is deleted: its label is negated.
            await alice.delete_track(second.rsplit("/", 1)[1])
            await labels_become(parts, net, second, set())

            source, store, engine = parts["source"], parts["store"], parts["engine"]
            assert source.stats.bad_signature == 0 and source.stats.unverified == 0
            assert source.stats.verified >= 4  # create, create, update, delete: each signature checked
            assert await store.dead_letters(10) == []
            first_labels = [(x.val, x.neg, x.cid) for x in await engine.label_log.in_force(first)]
            history = await engine.decisions.history(first)
        assert first_labels == []
        labeled = {r["value"]: r for r in history if r["action"] == "label"}
        assert labeled[COPY]["rule"] == "catalogue-match" and labeled[BLOCKED]["rule"] == "pdq-blocklist"
        assert {r["cid"] for r in labeled.values()} == {first_cid}
        assert sorted((r["value"], r["cid"]) for r in history if r["action"] == "negate") == sorted([
            (BLOCKED, updated_cid), (COPY, updated_cid)])

        # While the daemon is down, a third track: backfill finds it through the PLC and listRecords.
        copy_again = await alice.upload(copy_mp3, "audio/mpeg")  # the PDS dropped the blob with its last record
        third, third_cid = await alice.create_track(track("Mine Again", audio=copy_again))
        cli_env = {**env, **net.cli_env()}
        done = await anyio.to_thread.run_sync(
            lambda: run_cli("backfill", "--did", alice.did, env=cli_env, timeout=120))
        report = json.loads(done.stdout.splitlines()[-1])
        assert (report["repos_done"], report["repos_failed"], report["records_seen"]) == (1, 0, 2), report
        assert (report["enqueued"], report["duplicates"], report["dead_letters"]) == (1, 1, 0), report
        assert "netguard.loopback_allowed" in done.stderr  # warned, in the operator's command too
        # The PDS itself as the relay: it has no listReposByCollection (501), so its listRepos is paged.
        whole = await anyio.to_thread.run_sync(
            lambda: run_cli("backfill", "--relay", net.pds, "--restart", env=cli_env, timeout=120))
        report = json.loads(whole.stdout.splitlines()[-1])
        assert (report["repos_failed"], report["records_seen"], report["enqueued"]) == (0, 2, 0), report
        assert report["discovery_error"] is None and "backfill.listing_all_repos" in whole.stderr

        async with daemon(settings) as parts:
            jobs = await parts["store"].jobs(third)
            assert [(j["cid"], j["operation"]) for j in jobs] == [(third_cid, "create")], jobs
            await labels_become(parts, net, third, {COPY})
            # The firehose resumed from its cursor and met the same version: recognised, not queued twice.
            await eventually(lambda: _caught_up(parts), "the daemon read what the PDS sequenced while it was down")
            assert len(await parts["store"].jobs(third)) == 1
            assert parts["source"].stats.bad_signature == 0

            # What an appview sees: the label stream from the start.
            async with subscribe(f"ws://127.0.0.1:{parts['server'].port}", 0) as ws:
                got = await collect(ws, Received(), count=7, timeout=20)
        stream = [(x.uri, x.val, x.neg) for x in got.labels]
        assert got.seqs == sorted(got.seqs) and all(x.src == settings.did for x in got.labels)
        assert set(stream[:2]) == {(first, BLOCKED, False), (first, COPY, False)}
        assert stream[2] == (second, BLOCKED, False)
        assert set(stream[3:5]) == {(first, BLOCKED, True), (first, COPY, True)}
        assert stream[5:] == [(second, BLOCKED, True), (third, COPY, False)]

        # The guard stays on for everything that is not loopback: a private address is still refused.
        async with outbound_client(settings, timeout=2.0) as client:
            assert (await client.get(f"{net.plc}/{alice.did}")).status_code == 200
            with pytest.raises(UnsafeAddress):
                await client.get("http://10.0.0.1/")


async def _has_repo_event(settings, did: str, kind: str, handle: str) -> bool:
    with sqlite3.connect(settings.db_path) as db:
        rows = db.execute("SELECT kind, handle FROM repo_events WHERE did = ?", (did,)).fetchall()
    return (kind, handle) in rows


async def _caught_up(parts: dict) -> bool:
    return parts["source"].stats.frames > 0 and (await parts["store"].counts())["pending"] == 0


def test_loopback_setting_opens_loopback_only_and_is_off_by_default(tmp_path):
    default = load_settings(env={}, data_dir=tmp_path)
    assert default.media_allow_loopback_for_testing_only is False and allowed_networks(default) == ()
    on = load_settings(env={"FIREHOSE_MOD_MEDIA_ALLOW_LOOPBACK_FOR_TESTING_ONLY": "true"}, data_dir=tmp_path)
    assert allowed_networks(on) == ("127.0.0.0/8", "::1/128")
    both = replace(on, media_allow_networks=("10.1.0.0/16",))
    assert allowed_networks(both) == ("10.1.0.0/16", "127.0.0.0/8", "::1/128")
    with capture_logs() as logs:
        warn_if_opened(default, _structlog(), command="run")
        warn_if_opened(on, _structlog(), command="run")
    assert [e["event"] for e in logs] == ["netguard.loopback_allowed"]
    assert logs[0]["log_level"] == "warning" and "TESTING ONLY" in logs[0]["hint"]


async def test_loopback_setting_lets_requests_reach_loopback_and_nothing_else(tmp_path):
    from tests.fakes.media_server import MediaServer

    on = load_settings(env={}, data_dir=tmp_path, media_allow_loopback_for_testing_only=True)
    off = load_settings(env={}, data_dir=tmp_path)
    media = MediaServer()
    media.files["/x.png"] = (b"\x89PNG\r\n\x1a\n" + bytes(100), "image/png")
    with media:
        async with outbound_client(on, timeout=2.0) as client:
            assert (await client.get(f"{media.base}/x.png")).status_code == 200
            for private in ("http://10.0.0.1/", "http://192.168.1.1/", "http://169.254.169.254/", "http://[fd00::1]/"):
                with pytest.raises(UnsafeAddress):
                    await client.get(private)
        async with outbound_client(off, timeout=2.0) as client:
            with pytest.raises(UnsafeAddress):
                await client.get(f"{media.base}/x.png")


def _structlog():
    import structlog

    return structlog.get_logger("test")


@pytest.mark.slow
async def test_an_audio_only_mp4_or_webm_upload_is_scanned_like_any_other(settings, tmp_path):
    """The reference PDS names a blob by sniffing it: an audio-only MP4 (brand isom) is video/mp4
    and a WebM recording video/webm, and the record must say so. Such tracks are published by
    plyr.fm; they are fetched, fingerprinted and labeled, not dropped as lexicon violations."""
    check_installed()
    catalogue = tmp_path / "catalogue"
    catalogue.mkdir()
    reference = M.write_wav(catalogue / "hit-single.wav", M.song(101, 45))
    mp4 = M.ffmpeg(reference, tmp_path / "copy.mp4", "-c:a", "aac", "-b:a", "96k", "-f", "mp4").read_bytes()
    webm = M.ffmpeg(reference, tmp_path / "copy.webm", "-c:a", "libopus", "-b:a", "64k", "-f", "webm").read_bytes()
    env = env_for(settings.data_dir)
    added = json.loads(run_cli("catalogue", "add", str(catalogue), "--json", env=env, timeout=120).stdout)
    assert len(added["added"]) == 1

    async with reference_pds(tmp_path / "refpds") as net:
        settings = net.daemon_settings(settings, scanners=("self-labels", "text", "copyright"))
        async with daemon(settings) as parts:
            bob = await create_account(net, "bob")
            await until_following(parts["source"], bob)
            as_mp4, as_webm = await bob.upload(mp4, "audio/mp4"), await bob.upload(webm, "audio/webm")
            assert (as_mp4.json["mimeType"], as_webm.json["mimeType"]) == ("video/mp4", "video/webm")
            first, _ = await bob.create_track(track("From My Phone", audio=as_mp4, fileType="m4a"))
            second, _ = await bob.create_track(track("Recorded In The Browser", audio=as_webm, fileType="webm"))
            await labels_become(parts, net, first, {COPY})
            await labels_become(parts, net, second, {COPY})
            assert await parts["store"].dead_letters(10) == []


def test_an_audio_blob_of_any_declared_type_is_scanned_but_a_broken_blob_still_blocks():
    """plyr.fm publishes such records (its indexer does not check blob types): their text and
    cover are scanned; the fetcher decides about the audio (tests/test_media.py)."""
    from firehose_mod.ingest.lexicon import blocking_problems, validate_track

    def rec(mime: str, **blob_fields) -> dict:
        blob = {"$type": "blob", "ref": {"$link": "bafkreiabc"}, "mimeType": mime, "size": 1000, **blob_fields}
        return track("ok", audio=None, audioBlob=blob)

    for mime in ("video/mp4", "video/webm", "video/quicktime", "image/png", "text/html", "application/octet-stream"):
        assert validate_track(rec(mime)) == [f"audioBlob: mimeType '{mime}' is not audio/*"]  # the spec's word
        assert blocking_problems(rec(mime)) == []  # but scanned, as plyr.fm publishes it
    assert blocking_problems(rec("image/png", ref={})) == ["audioBlob: blob without a ref CID"]
    assert blocking_problems(rec("audio/mpeg", size=-1)) == ["audioBlob: size -1 outside 0..maxSize 104857600"]


async def test_get_blob_accepts_the_video_container_the_record_declares_and_nothing_else(tmp_path):
    from firehose_mod.scan.base import MediaError, Track
    from firehose_mod.scan.media import SafeFetcher
    from tests.fakes.media_server import MediaServer

    did = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"

    class Resolver:
        async def resolve_pds(self, did: str) -> str:
            return media.base

    def audio_track(mime: str, cid: str) -> Track:
        blob = {"$type": "blob", "ref": {"$link": cid}, "mimeType": mime, "size": 4000}
        return Track(uri=f"at://{did}/fm.plyr.track/3kabc", did=did, rkey="3kabc", cid="bafyreia", record={
            "audioBlob": blob})

    with MediaServer() as media:
        async with SafeFetcher(Resolver(), cache_dir=tmp_path / "cache", allow_networks=["127.0.0.1/32"],
                               allow_http=True, timeout=5) as fetcher:
            media.blob_type = "video/mp4"
            cid = media.add_blob(did, b"\x00\x00\x00\x20ftypisom" + bytes(4000))
            assert (await fetcher.audio(audio_track("video/mp4", cid))).stat().st_size == 4012
            other = media.add_blob(did, b"\x00\x00\x00\x20ftypmp42" + bytes(4000))
            with pytest.raises(MediaError, match="content type 'video/mp4' is not audio"):
                await fetcher.audio(audio_track("audio/mpeg", other))  # the PDS says otherwise: refused
            media.blob_type = "text/html"
            html = media.add_blob(did, b"<html>" + bytes(4000))
            with pytest.raises(MediaError, match="content type 'text/html' is not audio"):
                await fetcher.audio(audio_track("video/mp4", html))  # only the declared container
