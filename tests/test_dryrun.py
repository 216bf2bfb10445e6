"""`scan TARGET...` (dry run): the daemon's scanners and policy on files, URLs and tracks,
reporting the match and the would-be decisions, and writing nothing at all."""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import pytest

from firehose_mod.daemon import open_label_log
from firehose_mod.ingest.events import TrackEvent
from firehose_mod.ops.dryrun import dry_run, exit_code, render_summary, render_text, summary
from firehose_mod.scan.copyright import import_paths, reference_name
from firehose_mod.scan.cover import CoverLimits, analyse_cover
from firehose_mod.scan.fingerprint import FingerprintIndex
from firehose_mod.store.catalogue import CatalogueStore
from firehose_mod.store.decisions import DecisionRow, DecisionStore
from firehose_mod.store.ingest import IngestStore

from tests import media as M
from tests.fakes.jetstream import track_record
from tests.fakes.media_server import MediaServer, raw_cid
from tests.fakes.pds import FakeNetwork, fake_cid
from tests.test_cover import artwork

pytestmark = pytest.mark.anyio

AUTHOR = "did:plc:abcdefghijklmnopqrstuvwx"
TRACK_URI = f"at://{AUTHOR}/fm.plyr.track/3kcopy"
OLD_CID = raw_cid(b"an earlier version of the record")
GET_RECORD = "com.atproto.repo.getRecord"


async def inline(fn, *args):
    return fn(*args)


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    artwork(seed).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
async def world(settings, tmp_path):
    """A catalogued reference, a low-bitrate copy of it, unrelated audio, a blocklisted cover and a
    clean one; a database that already holds a label, a decision, a review item and a queued job."""
    refs = tmp_path / "refs"
    refs.mkdir()
    reference = M.write_wav(refs / "hit-single.wav", M.song(101, 40))
    files = tmp_path / "upload"
    files.mkdir()
    M.mp3(reference, files / "copy.mp3", kbps=32)
    M.mp3(M.write_wav(tmp_path / "own.wav", M.song(202, 30)), files / "unrelated.mp3", kbps=128)
    (files / "bad.png").write_bytes(png(7))
    (files / "clean.png").write_bytes(png(8))
    (files / "notes.txt").write_text("liner notes")
    known_bad = analyse_cover(str(files / "bad.png"), CoverLimits(), None, True).pdq[0]
    (tmp_path / "pdq.txt").write_text(f"{known_bad} porn  # reported image\n")
    settings = replace(settings, scanners=("self-labels", "text", "cover-art", "copyright"), cover_nsfw=False,
                       pdq_blocklist=tmp_path / "pdq.txt", media_allow_networks=("127.0.0.1/32",),
                       media_allow_http=True)

    store = await CatalogueStore.open(settings.db_path)
    try:
        report = await import_paths([refs], store, FingerprintIndex(), run_cpu=inline)
    finally:
        await store.close()
    assert len(report.added) == 1
    async with open_label_log(settings) as label_log:  # an automatic label the policy would now withdraw
        stored = await label_log.emit(TRACK_URI, "sexual", cid=OLD_CID)
    decisions = await DecisionStore.open(settings.db_path)
    await decisions.record([DecisionRow(TRACK_URI, OLD_CID, "label", "sexual", origin="policy", rule="cover-sexual",
                                        label_seq=stored.seq)],
                           [(TRACK_URI, OLD_CID, "offensive-text", "policy rule text-slur", [])])
    await decisions.close()
    ingest = await IngestStore.open(settings.db_path)
    await ingest.commit("jetstream", 1, [TrackEvent(AUTHOR, "fm.plyr.track", "3kcopy", "create", OLD_CID,
                                                    track_record("Totally Mine"), 1)])
    await ingest.close()
    return settings, files, reference_name(reference)


def snapshot(db: Path) -> dict:
    """Everything a dry run must leave alone, read with the stdlib driver, plus the file's hash."""
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        counts = {table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                  for table in ("labels", "scan_jobs", "review_items", "decisions", "catalogue_refs",
                                "catalogue_hashes", "tracks")}
        counts["head"] = conn.execute("SELECT coalesce(max(seq), 0) FROM labels").fetchone()[0]
    counts["sha256"] = hashlib.sha256(db.read_bytes()).hexdigest()
    return counts


async def test_directory_reports_match_and_decisions_per_file_and_writes_nothing(world):
    settings, files, ref = world
    before = snapshot(settings.db_path)
    assert before["head"] == 1 and before["scan_jobs"] == 1 and before["review_items"] == 1
    seen = []
    report = await dry_run(settings, [str(files)], progress=lambda *a: seen.append(a))

    by_name = {Path(r.target).name: r for r in report.results}
    assert sorted(by_name) == ["bad.png", "clean.png", "copy.mp3", "unrelated.mp3"]
    assert report.skipped == [(str(files / "notes.txt"), "not an audio or image file (.txt)")]
    assert [d for d, *_ in sorted(seen)] == [1, 2, 3, 4]

    copy = by_name["copy.mp3"].to_json()
    assert copy["kind"] == "audio" and copy["match"] == ref and copy["status"] == "label"
    assert 30 <= copy["match_detail"]["seconds_matched"] <= 41 and copy["match_detail"]["score"] > 0
    assert copy["match_detail"]["query_start"] is not None and copy["match_detail"]["ref_end"] is not None
    (emit,) = copy["decisions"]["emit"]
    assert (emit["value"], emit["rule"]) == ("copyright-violation", "catalogue-match")
    assert emit["evidence"][0]["evidence"]["ref"] == ref

    unrelated = by_name["unrelated.mp3"].to_json()
    assert unrelated["match"] is None and unrelated["status"] == "clean" and unrelated["errors"] == []
    bad = by_name["bad.png"].to_json()
    assert bad["kind"] == "image"
    assert [(d["value"], d["rule"]) for d in bad["decisions"]["emit"]] == [("porn", "pdq-blocklist")]
    assert by_name["clean.png"].status == "clean"
    for r in report.results:
        json.dumps(r.to_json())  # every result is plain JSON

    assert "LABEL    copyright-violation  (rule catalogue-match)" in render_text(by_name["copy.mp3"])
    assert f"matches {ref}" in render_text(by_name["copy.mp3"])
    assert "nothing would change" in render_text(by_name["unrelated.mp3"])
    assert summary(report)["would_label"] == 2 and summary(report)["errors"] == 0
    assert "nothing was written" in render_summary(report) and exit_code(report) == 1
    assert snapshot(settings.db_path) == before


async def test_unrelated_file_alone_matches_nothing_and_a_missing_target_is_an_error(world):
    settings, files, _ref = world
    report = await dry_run(settings, [str(files / "unrelated.mp3"), str(files / "missing.wav")])
    unrelated, missing = report.results
    assert unrelated.match is None and unrelated.status == "clean" and exit_code(report) == 2
    assert missing.status == "error" and "no such file" in missing.errors[0]["error"]


class PdsWithGetRecord(FakeNetwork):
    """The fake network's PLC and PDS, answering com.atproto.repo.getRecord too."""

    def _route(self, path: str, query: dict[str, str]) -> tuple[int, dict]:
        parts = path.strip("/").split("/")
        if parts[0] == "pds" and parts[2:] == ["xrpc", GET_RECORD]:
            uri = f"at://{query.get('repo')}/{query.get('collection')}/{query.get('rkey')}"
            for item in self.pdses[parts[1]].repos.get(query.get("repo", ""), []):
                if item["uri"] == uri:
                    return 200, item
            return 400, {"error": "RecordNotFound", "message": f"Could not locate record: {uri}"}
        return super()._route(path, query)


async def test_track_uri_and_urls_are_fetched_like_the_daemon_fetches_them(world):
    settings, files, ref = world
    with MediaServer() as media, PdsWithGetRecord() as net:
        media.files["/copy.mp3"] = ((files / "copy.mp3").read_bytes(), "audio/mpeg")
        media.files["/bad.png"] = ((files / "bad.png").read_bytes(), "image/png")
        media.files["/cover"] = ((files / "bad.png").read_bytes(), "image/png")  # no extension: by content type
        net.add_pds("one")
        record = track_record("Totally Mine", audioUrl=f"{media.base}/copy.mp3", imageUrl=f"{media.base}/bad.png")
        net.add_repo(AUTHOR, "one", [{"uri": TRACK_URI, "cid": fake_cid("copy"), "value": record}])
        settings = replace(settings, plc_url=net.plc_url)
        before = snapshot(settings.db_path)
        report = await dry_run(settings, [TRACK_URI, f"{media.base}/cover", f"at://{AUTHOR}/fm.plyr.track/3knope"])
        assert net.count(GET_RECORD) == 2
    track, cover, gone = report.results
    out = track.to_json()
    assert out["kind"] == "record" and out["uri"] == TRACK_URI and out["match"] == ref
    assert sorted(d["value"] for d in out["decisions"]["emit"]) == ["copyright-violation", "porn"]
    assert out["decisions"]["negate"] == [{"value": "sexual", "rule": "no longer found"}]
    assert out["decisions"]["review"] == []  # offensive-text is already open; nothing new to open
    assert "NEGATE   sexual" in render_text(track)
    assert cover.kind == "image" and [d.value for d in cover.plan.emit] == ["porn"]
    assert gone.status == "error" and "RecordNotFound" in gone.errors[0]["error"]
    assert snapshot(settings.db_path) == before


async def test_without_a_database_nothing_is_created_not_even_the_key(settings, tmp_path):
    cover = tmp_path / "cover.png"
    cover.write_bytes(png(3))
    report = await dry_run(replace(settings, cover_nsfw=False), [str(cover)])
    (result,) = report.results
    assert result.kind == "image" and result.status == "clean" and result.errors == []
    assert not settings.db_path.exists() and not settings.key_path.exists()
