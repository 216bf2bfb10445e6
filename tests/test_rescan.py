"""rescan after a catalogue import, a removal and a threshold change, through the real CLI."""

from __future__ import annotations

import json

import pytest

from firehose_mod.ingest.events import TrackEvent
from firehose_mod.scan.policy import DEFAULT_POLICY
from firehose_mod.store.ingest import IngestStore

from tests import media as M
from tests.fakes.jetstream import real_cid, track_record
from tests.fakes.media_server import MediaServer
from tests.procs import env_for, run_cli

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

COPY = "at://did:plc:uploaderaaaaaaaaaaaaaaaa/fm.plyr.track/3kcopy"
OTHER = "at://did:plc:uploaderaaaaaaaaaaaaaaaa/fm.plyr.track/3kother"


def rescan(env, *args) -> tuple[list[dict], dict]:
    out = run_cli("rescan", *args, "--json", "--rate", "0", env=env, timeout=120).stdout.splitlines()
    rows = [json.loads(line) for line in out]
    return rows[:-1], rows[-1]["summary"]


def db_counts(db) -> dict:
    import sqlite3

    with sqlite3.connect(db) as c:
        return {t: c.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in ("labels", "decisions", "review_items", "catalogue_refs", "scan_jobs")}


async def test_catalogue_add_rescan_apply_idempotent_remove_and_threshold_change(settings, tmp_path):
    (tmp_path / "catalogue").mkdir()
    reference = M.write_wav(tmp_path / "catalogue" / "hit.wav", M.song(101, 45))
    copy = M.mp3(reference, tmp_path / "copy.mp3", kbps=32)
    other = M.mp3(M.write_wav(tmp_path / "other.wav", M.song(303, 45)), tmp_path / "other.mp3")
    media = MediaServer()
    media.files["/copy.mp3"] = (copy.read_bytes(), "audio/mpeg")
    media.files["/other.mp3"] = (other.read_bytes(), "audio/mpeg")
    with media:
        store = await IngestStore.open(settings.db_path)
        events = [TrackEvent("did:plc:uploaderaaaaaaaaaaaaaaaa", "fm.plyr.track", uri.rsplit("/", 1)[1], "create",
                             real_cid(uri.encode()), track_record("Mine", audioUrl=f"{media.base}/{name}"), 1,
                             "3kaaaaaaaaaa2", "jetstream")
                  for uri, name in ((COPY, "copy.mp3"), (OTHER, "other.mp3"))]
        await store.commit("jetstream", 1, events)
        await store.close()
        env = env_for(settings.data_dir, FIREHOSE_MOD_SCANNERS="copyright",
                      FIREHOSE_MOD_MEDIA_ALLOW_NETWORKS="127.0.0.1/32", FIREHOSE_MOD_MEDIA_ALLOW_HTTP="true")

        # The uploads were scanned when the catalogue was empty: nothing to change.
        rows, summary = rescan(env, "--all", "--apply")
        assert rows == [] and summary["checked"] == 2

        run_cli("catalogue", "add", str(tmp_path / "catalogue"), env=env, timeout=120)
        before = db_counts(settings.db_path)
        rows, summary = rescan(env, "--all")  # dry run: shows, writes nothing
        assert [(r["uri"], [e["value"] for e in r["emit"]]) for r in rows] == [(COPY, ["copyright-violation"])]
        assert rows[0]["emit"][0]["rule"] == "catalogue-match"
        assert rows[0]["emit"][0]["evidence"][0]["seconds_matched"] >= 30
        assert db_counts(settings.db_path) == before

        rows, summary = rescan(env, "--all", "--apply")
        assert summary["labels"] == 1 and summary["applied"] is True
        after_apply = db_counts(settings.db_path)
        rows, summary = rescan(env, "--all", "--apply")  # a second apply is a no-op
        assert rows == [] and summary["changed"] == 0
        assert db_counts(settings.db_path) == after_apply

        # A threshold change: catalogue matches now need 60 s to label; 45 s is a review.
        policy = tmp_path / "policy.toml"
        policy.write_text(DEFAULT_POLICY.replace("min = { seconds_matched = 30 }", "min = { seconds_matched = 60 }"))
        strict = dict(env, FIREHOSE_MOD_POLICY_FILE=str(policy))
        rows, _ = rescan(strict, "--uri", COPY, "--uri", OTHER)
        assert [(r["uri"], r["negate"], [x["value"] for x in r["review"]], r["emit"]) for r in rows] == [
            (COPY, ["copyright-violation"], ["copyright-violation"], [])]

        # The rights holder withdraws the reference: the label that rested on it goes.
        ref = json.loads(run_cli("catalogue", "list", "--json", env=env).stdout.splitlines()[0])["ref"]
        run_cli("catalogue", "remove", ref, env=env)
        rows, summary = rescan(env, "--all", "--apply")
        assert [(r["uri"], r["negate"]) for r in rows] == [(COPY, ["copyright-violation"])]

        # explain, from the CLI: both labels with the decisions and evidence behind them.
        expl = json.loads(run_cli("explain", COPY, "--json", env=env).stdout)
        (label, negation) = expl["labels"]
        assert (label["val"], label["neg"], negation["neg"]) == ("copyright-violation", False, True)
        assert label["decision"]["rule"] == "catalogue-match" and label["decision"]["origin"] == "policy"
        assert label["decision"]["findings"][0]["evidence"]["ref"] == ref
        assert expl["in_force"] == []
        # OTHER was only ever rescanned (a rescan records changes, not clean results): said plainly.
        other = run_cli("explain", OTHER, env=env, check=False)
        assert other.returncode == 1 and "nothing recorded" in other.stderr
        text = run_cli("explain", COPY, env=env).stdout
        assert "catalogue-match" in text and "copyright-violation" in text
    assert db_counts(settings.db_path)["labels"] == 2  # the label, then its negation: history kept
