"""The optional AudD backend: a paid second opinion when the local fingerprint index has no match.

AudD's enterprise endpoint (`https://enterprise.audd.io/`, a multipart POST with `api_token`,
`file`, and optional `skip`, `every`, `limit`, `skip_first_seconds`, `accurate_offsets`)
scans a whole file in 12-second chunks and answers
`{"status": "success", "result": [{"offset": "MM:SS", "songs": [{artist, title, album, label,
isrc, upc, timecode, score, start_offset, end_offset, song_link, ...}]}]}` or
`{"status": "error", "error": {"error_code": 901, "error_message": "..."}}`.
Sources: AudD's API README (github.com/AudDMusic, "Process Long Files (Enterprise)": "Requests
are counted as 1 per 12 seconds of audio. Use `skip` and `every` to control cost"; `every` =
consecutive 12 s chunks scanned, `skip` = chunks skipped after them, `limit` = matches per chunk,
"recommended: 1 for cost control"; `skip=4&every=1` = one request per minute of audio), and
plyr.fm's own cost accounting (commit 5aa1109, "AudD billing: $5/mo base + $5/1k requests over
6000 free tier", 1 request = 12 s of audio). Hence the default price of $0.005 per unit; AudD
sends no billing figure back, so units are estimated from the track's duration and sampling.

A match is a claim, not a verdict (a cover or the uploader's own remix matches too): the
scanner reports it with its evidence and cost, and the policy decides.
"""

from __future__ import annotations

import math
import random
from collections import Counter, OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import anyio
import httpx
import structlog

from firehose_mod.scan.base import MEDIA_UNAVAILABLE, Finding, ScanContext, Track

log = structlog.get_logger(__name__)

ENTERPRISE_ENDPOINT = "https://enterprise.audd.io/"
CHUNK_SECONDS = 12
PRICE_PER_UNIT_USD = 0.005  # $5 per 1000 requests beyond the plan's free tier (see module docstring)
_SONG_FIELDS = ("artist", "title", "album", "label", "release_date", "isrc", "upc", "timecode",
                "song_link", "score", "start_offset", "end_offset")


class AuddError(Exception):
    """AudD refused or failed; `code` is AudD's error_code (or the HTTP status), `transient` = retry may help."""

    def __init__(self, message: str, *, code: int | None = None, transient: bool = False):
        super().__init__(message)
        self.code = code
        self.transient = transient


@dataclass(frozen=True)
class AuddMatch:
    """One song recognised in one 12 s chunk; `offset` is where the chunk starts in *our* file."""

    offset: str
    offset_s: float | None
    artist: str
    title: str
    album: str | None = None
    label: str | None = None
    release_date: str | None = None
    isrc: str | None = None
    upc: str | None = None
    timecode: str | None = None  # position in the *original* song
    song_link: str | None = None
    score: float | None = None
    start_offset: int | None = None  # ms within the chunk
    end_offset: int | None = None


@dataclass(frozen=True)
class AuddResult:
    """Matches of one enterprise call, with the units it is billed for and their cost."""

    matches: list[AuddMatch] = field(default_factory=list)
    units: int = 0
    cost_usd: float = 0.0
    units_exact: bool = True  # False when the duration was unknown (units are then a lower bound)


def estimate_units(duration_s: float, *, skip: int = 0, every: int = 1, skip_first_seconds: int = 0) -> int:
    """Billed units (12 s chunks scanned) for a file of `duration_s` with this sampling."""
    chunks = math.ceil(max(0.0, duration_s - skip_first_seconds) / CHUNK_SECONDS)
    cycle = every + skip
    return (chunks // cycle) * every + min(chunks % cycle, every)


def parse_timecode(value: object) -> float | None:
    """"MM:SS" / "HH:MM:SS" / seconds -> seconds; None when unreadable."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, str):
        return None
    try:
        seconds = 0.0
        for part in value.strip().split(":"):
            seconds = seconds * 60 + float(part)
        return seconds
    except ValueError:
        return None


def parse_response(body: object) -> list[AuddMatch]:
    """AudD's JSON -> matches; raises AuddError for an error answer or a shape we do not know."""
    if not isinstance(body, dict):
        raise AuddError("AudD answered something that is not a JSON object")
    if body.get("status") == "error":
        err = body.get("error") if isinstance(body.get("error"), dict) else {}
        code = err.get("error_code")
        raise AuddError(f"AudD error #{code}: {str(err.get('error_message', 'no message'))[:300]}",
                        code=code if isinstance(code, int) else None)
    if body.get("status") != "success":
        raise AuddError(f"AudD answered status {str(body.get('status'))[:40]!r}")
    result = body.get("result")
    if result is None:
        return []
    if isinstance(result, dict):  # the standard endpoint's single-song shape
        result = [{"offset": "00:00", "songs": [result]}]
    if not isinstance(result, list):
        raise AuddError("AudD result is neither a list of chunks nor null")
    matches = []
    for chunk in result:
        if not isinstance(chunk, dict) or not isinstance(chunk.get("songs"), list):
            continue
        offset = str(chunk.get("offset", ""))
        for song in chunk["songs"]:
            if not isinstance(song, dict):
                continue
            fields = {k: song.get(k) for k in _SONG_FIELDS if song.get(k) is not None}
            fields["artist"] = str(fields.get("artist", ""))
            fields["title"] = str(fields.get("title", ""))
            matches.append(AuddMatch(offset=offset, offset_s=parse_timecode(offset), **fields))
    return matches


class AuddClient:
    """A client for AudD's enterprise endpoint with sampling, cost estimates and retries.

    `skip`/`every`/`limit`/`skip_first_seconds` are sent as AudD documents them (omitted
    when None); `cost_per_unit_usd` prices one billed 12 s chunk. 5xx, 429, timeouts and
    connection errors are retried `retries` times with jittered exponential backoff.
    """

    def __init__(self, api_token: str, *, endpoint: str = ENTERPRISE_ENDPOINT, skip: int | None = 1,
                 every: int | None = 1, limit: int | None = 1, skip_first_seconds: int | None = None,
                 accurate_offsets: bool = True, cost_per_unit_usd: float = PRICE_PER_UNIT_USD,
                 timeout: float = 300.0, retries: int = 3, backoff: float = 1.0,
                 client: httpx.AsyncClient | None = None):
        if not api_token:
            raise ValueError("AudD needs an api_token (dashboard.audd.io)")
        self.api_token = api_token
        self.endpoint = endpoint
        self.skip, self.every, self.limit = skip, every, limit
        self.skip_first_seconds = skip_first_seconds
        self.accurate_offsets = accurate_offsets
        self.cost_per_unit_usd = cost_per_unit_usd
        self.retries = retries
        self.backoff = backoff
        self._client = client or httpx.AsyncClient(timeout=httpx.Timeout(timeout), trust_env=False)
        self._owns_client = client is None

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    def form(self, *, skip: int | None = None) -> dict[str, str]:
        """The form fields sent with the file (without the token, for logs and tests)."""
        fields = {"skip": skip if skip is not None else self.skip, "every": self.every, "limit": self.limit,
                  "skip_first_seconds": self.skip_first_seconds,
                  "accurate_offsets": "true" if self.accurate_offsets else None}
        return {k: str(v) for k, v in fields.items() if v is not None}

    def units_for(self, duration_s: float, *, skip: int | None = None) -> int:
        skip = (self.skip or 0) if skip is None else skip
        return estimate_units(duration_s, skip=skip, every=self.every or 1,
                              skip_first_seconds=self.skip_first_seconds or 0)

    async def recognize(self, path: Path, duration_s: float | None, *, skip: int | None = None) -> AuddResult:
        """Send `path` to AudD; `skip` overrides the configured sampling for this call."""
        form = self.form(skip=skip)
        body = await self._post(Path(path), form)
        matches = parse_response(body)
        if duration_s is not None:
            units, exact = self.units_for(duration_s, skip=skip), True
        else:  # only the chunks that matched are known to have been scanned
            units, exact = len({m.offset for m in matches}), False
        return AuddResult(matches, units, round(units * self.cost_per_unit_usd, 6), exact)

    async def _post(self, path: Path, form: dict[str, str]) -> object:
        for attempt in range(self.retries + 1):
            try:
                return await self._post_once(path, form)
            except AuddError as exc:
                if not exc.transient or attempt == self.retries:
                    raise
                delay = min(self.backoff * 2**attempt, 30.0) * (0.5 + random.random() / 2)
                log.warning("audd.retry", error=str(exc), attempt=attempt + 1, delay=round(delay, 2))
                await anyio.sleep(delay)
        raise AssertionError("unreachable")

    async def _post_once(self, path: Path, form: dict[str, str]) -> object:
        try:
            with path.open("rb") as audio:
                response = await self._client.post(
                    self.endpoint, data={"api_token": self.api_token, **form},
                    files={"file": (path.name, audio, "application/octet-stream")})
        except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
            raise AuddError(f"AudD unreachable: {type(exc).__name__}: {exc}"[:300], transient=True) from None
        except OSError as exc:
            raise AuddError(f"cannot read {path}: {exc.strerror}") from None
        if response.status_code >= 500 or response.status_code == 429:
            raise AuddError(f"AudD answered HTTP {response.status_code}", code=response.status_code, transient=True)
        if response.status_code != 200:
            raise AuddError(f"AudD answered HTTP {response.status_code}: {response.text[:200]!r}",
                            code=response.status_code)
        try:
            return response.json()
        except ValueError:
            raise AuddError(f"AudD answered non-JSON: {response.text[:200]!r}") from None


class AuddScanner:
    """Scanner "audd": asks AudD only when the local index found nothing (`ctx.local_match`).

    `max_units_per_track` caps the cost of one track: longer files are sampled more sparsely
    (a larger `skip`). `stats` counts calls, units and USD; `costs` keeps the last tracks' cost.
    """

    name = "audd"
    version = "1"
    kinds = frozenset({"copyright-match", MEDIA_UNAVAILABLE})
    values = frozenset({"copyright-violation"})
    after_local = True  # runs after the local index, and asks AudD only when that found nothing

    def __init__(self, client: AuddClient, *, max_units_per_track: int = 60, keep_costs: int = 1000):
        self.client = client
        self.max_units_per_track = max_units_per_track
        self.keep_costs = keep_costs
        self.stats: dict[str, float] = {"calls": 0, "skipped_local_match": 0, "no_audio": 0, "matched": 0,
                                        "units": 0, "usd": 0.0}
        self.costs: OrderedDict[str, dict[str, float]] = OrderedDict()

    def _skip_for(self, duration_s: float | None) -> int | None:
        if duration_s is None or self.client.units_for(duration_s) <= self.max_units_per_track:
            return None
        skip, chunks = self.client.skip or 0, math.ceil(duration_s / CHUNK_SECONDS)
        while self.client.units_for(duration_s, skip=skip) > self.max_units_per_track and skip < chunks:
            skip += 1
        return skip

    async def scan(self, track: Track, ctx: ScanContext) -> list[Finding]:
        if ctx.local_match:
            self.stats["skipped_local_match"] += 1
            return []
        path = await ctx.media.audio(track)
        if path is None:
            self.stats["no_audio"] += 1
            return []
        duration = track.record.get("duration")
        duration = float(duration) if isinstance(duration, int) and not isinstance(duration, bool) else None
        skip = self._skip_for(duration)
        result = await self.client.recognize(path, duration, skip=skip)
        self._count(track.uri, result)
        log.info("audd.scanned", uri=track.uri, matches=len(result.matches), units=result.units,
                 usd=result.cost_usd, units_exact=result.units_exact)
        if not result.matches:
            return []
        self.stats["matched"] += 1
        return [self._finding(result, duration, skip)]

    def _count(self, uri: str, result: AuddResult) -> None:
        self.stats["calls"] += 1
        self.stats["units"] += result.units
        self.stats["usd"] = round(self.stats["usd"] + result.cost_usd, 6)
        self.costs[uri] = {"units": result.units, "usd": result.cost_usd}
        self.costs.move_to_end(uri)
        while len(self.costs) > self.keep_costs:
            self.costs.popitem(last=False)

    def _finding(self, result: AuddResult, duration: float | None, skip: int | None) -> Finding:
        songs = Counter((m.artist.lower(), m.title.lower()) for m in result.matches)
        (artist, title), hits = songs.most_common(1)[0]
        chunks_matched = len({m.offset for m in result.matches})
        scanned = max(result.units, chunks_matched, 1)
        return Finding(
            scanner=self.name, kind="copyright-match", value="copyright-violation",
            # Share of scanned chunks where the dominant song was heard: a rip scores near 1,
            # one stray chunk scores low.
            score=round(min(1.0, hits / scanned), 3),
            evidence={
                "source": "audd",
                "dominant": {"artist": artist, "title": title, "chunks": hits},
                "chunks_matched": chunks_matched,
                "chunks_scanned": result.units,
                "matches": [{k: v for k, v in asdict(m).items() if v is not None} for m in result.matches[:50]],
                "sampling": {**self.client.form(skip=skip), "duration_s": duration},
                "cost": {"units": result.units, "usd": result.cost_usd, "exact": result.units_exact},
            },
        )
