"""AuddClient and AuddScanner against a local server speaking AudD's enterprise format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from firehose_mod.scan.audd import (AuddClient, AuddError, AuddScanner, estimate_units, parse_response,
                                    parse_timecode)
from firehose_mod.scan.base import Scanner, ScanContext, Track
from tests.fakes.audd import FakeAudd

pytestmark = pytest.mark.anyio

AUDIO = b"ID3" + bytes(5000)


class FileMedia:
    """Media that hands out one local file (or None), counting calls."""

    def __init__(self, path: Path | None):
        self.path = path
        self.calls = 0

    async def audio(self, track: Track) -> Path | None:
        self.calls += 1
        return self.path

    async def image(self, track: Track) -> Path | None:
        return None


@pytest.fixture
def audio_file(tmp_path) -> Path:
    path = tmp_path / "track.mp3"
    path.write_bytes(AUDIO)
    return path


@pytest.fixture
def fake():
    with FakeAudd() as server:
        yield server


def client_for(fake: FakeAudd, **kw) -> AuddClient:
    return AuddClient("secret-token", endpoint=fake.url, backoff=0.01, **kw)


def track(duration: int | None = 180) -> Track:
    record = {"title": "Warriors", "artist": "someone", "fileType": "mp3", "createdAt": "2024-01-01T00:00:00Z"}
    if duration is not None:
        record["duration"] = duration
    return Track(uri="at://did:plc:abc/fm.plyr.track/3kx", did="did:plc:abc", rkey="3kx", cid="bafyrei", record=record)


# -- pure parts ----------------------------------------------------------------------------------

def test_units_follow_audd_sampling():
    assert estimate_units(180) == 15  # every 12 s chunk
    assert estimate_units(180, skip=1, every=1) == 8  # 15 chunks: scan, skip, scan, ...
    assert estimate_units(600, skip=4, every=1) == 10  # AudD's example: one request per minute
    assert estimate_units(60, skip_first_seconds=30) == 3
    assert estimate_units(0) == 0


def test_timecodes_and_offsets_parse():
    assert parse_timecode("04:48") == 288
    assert parse_timecode("1:00:05") == 3605
    assert parse_timecode(12) == 12.0
    assert parse_timecode("soon") is None


def test_error_answer_becomes_an_exception_with_audd_code():
    with pytest.raises(AuddError, match="#900") as err:
        parse_response({"status": "error", "error": {"error_code": 900, "error_message": "Wrong API token"}})
    assert err.value.code == 900 and not err.value.transient
    assert parse_response({"status": "success", "result": None}) == []
    with pytest.raises(AuddError):
        parse_response(["not", "an", "object"])


# -- the client ----------------------------------------------------------------------------------

async def test_request_carries_token_file_and_sampling(fake, audio_file):
    client = client_for(fake, skip=2, every=1, limit=1)
    await client.recognize(audio_file, 120)
    sent = fake.requests[-1]
    assert sent["api_token"] == "secret-token" and sent["file"] == AUDIO
    assert (sent["skip"], sent["every"], sent["limit"], sent["accurate_offsets"]) == ("2", "1", "1", "true")
    assert "skip_first_seconds" not in sent
    await client.aclose()


async def test_matches_are_parsed_with_offsets_and_cost(fake, audio_file):
    client = client_for(fake, skip=1, every=1, cost_per_unit_usd=0.005)
    result = await client.recognize(audio_file, 180)
    assert [m.offset for m in result.matches] == ["00:00", "00:24", "00:48"]
    first = result.matches[0]
    assert (first.artist, first.title, first.label, first.isrc, first.timecode) == (
        "Imagine Dragons", "Warriors", "Universal Music", "USUM71414142", "00:40")
    assert (first.offset_s, first.start_offset, first.end_offset, first.score) == (0.0, 1200, 11800, 100)
    assert result.units == 8 and result.cost_usd == pytest.approx(0.04) and result.units_exact


async def test_no_match_still_costs(fake, audio_file):
    fake.mode = "nomatch"
    result = await client_for(fake, skip=0).recognize(audio_file, 60)
    assert result.matches == [] and result.units == 5


async def test_unknown_duration_counts_a_lower_bound(fake, audio_file):
    result = await client_for(fake).recognize(audio_file, None)
    assert result.units == 3 and not result.units_exact


async def test_audd_error_is_raised_without_retrying(fake, audio_file):
    fake.mode = "error"
    with pytest.raises(AuddError, match="#901: Recognition failed"):
        await client_for(fake).recognize(audio_file, 60)
    assert len(fake.requests) == 1


async def test_server_errors_are_retried_with_backoff(fake, audio_file):
    fake.fail_times = 2
    result = await client_for(fake, retries=3).recognize(audio_file, 60)
    assert len(result.matches) == 3 and len(fake.requests) == 3


async def test_retries_give_up_with_a_clear_error(fake, audio_file):
    fake.fail_times = 10
    with pytest.raises(AuddError, match="HTTP 500") as err:
        await client_for(fake, retries=2).recognize(audio_file, 60)
    assert err.value.transient and len(fake.requests) == 3


async def test_unreachable_endpoint_is_a_transient_error(audio_file):
    from tests.fakes.pds import closed_port

    client = AuddClient("t", endpoint=f"http://127.0.0.1:{closed_port()}/", retries=1, backoff=0.01)
    with pytest.raises(AuddError, match="unreachable") as err:
        await client.recognize(audio_file, 60)
    assert err.value.transient


# -- the scanner ---------------------------------------------------------------------------------

async def test_scanner_reports_a_copyright_match_with_evidence_and_cost(fake, audio_file):
    scanner = AuddScanner(client_for(fake, skip=1, every=1))
    assert isinstance(scanner, Scanner)
    findings = await scanner.scan(track(180), ScanContext(media=FileMedia(audio_file), run_cpu=None))
    [finding] = findings
    assert (finding.scanner, finding.kind, finding.value) == ("audd", "copyright-match", "copyright-violation")
    assert finding.score == pytest.approx(3 / 8)
    ev = finding.evidence
    assert ev["dominant"] == {"artist": "imagine dragons", "title": "warriors", "chunks": 3}
    assert [m["offset"] for m in ev["matches"]] == ["00:00", "00:24", "00:48"]
    assert ev["cost"] == {"units": 8, "usd": 0.04, "exact": True}
    json.dumps(ev)  # evidence is stored as JSON
    assert scanner.stats["units"] == 8 and scanner.stats["usd"] == pytest.approx(0.04)
    assert scanner.costs[track().uri] == {"units": 8, "usd": 0.04}


async def test_scanner_does_not_call_audd_when_the_local_index_matched(fake, audio_file):
    scanner = AuddScanner(client_for(fake))
    media = FileMedia(audio_file)
    assert await scanner.scan(track(), ScanContext(media=media, run_cpu=None, local_match=True)) == []
    assert fake.requests == [] and media.calls == 0
    assert scanner.stats["skipped_local_match"] == 1 and scanner.stats["usd"] == 0


async def test_scanner_counts_cost_of_calls_without_a_match(fake, audio_file):
    fake.mode = "nomatch"
    scanner = AuddScanner(client_for(fake, skip=0))
    ctx = ScanContext(media=FileMedia(audio_file), run_cpu=None, local_match=False)
    assert await scanner.scan(track(120), ctx) == []
    assert scanner.stats["calls"] == 1 and scanner.stats["units"] == 10


async def test_scanner_skips_tracks_without_audio(fake):
    scanner = AuddScanner(client_for(fake))
    assert await scanner.scan(track(), ScanContext(media=FileMedia(None), run_cpu=None)) == []
    assert fake.requests == [] and scanner.stats["no_audio"] == 1


async def test_long_tracks_are_sampled_within_the_cost_cap(fake, audio_file):
    scanner = AuddScanner(client_for(fake, skip=1, every=1), max_units_per_track=20)
    await scanner.scan(track(3600), ScanContext(media=FileMedia(audio_file), run_cpu=None))  # 300 chunks
    sent_skip = int(fake.requests[-1]["skip"])
    assert estimate_units(3600, skip=sent_skip, every=1) <= 20
    assert estimate_units(3600, skip=sent_skip - 1, every=1) > 20
    assert scanner.stats["units"] <= 20
