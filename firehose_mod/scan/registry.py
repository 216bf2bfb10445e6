"""The scanners, as data: a table of name to factory, and the one builder of the scan engine.

To add a scanner: write `scan/NAME.py` with a class that meets `scan.base.Scanner`, add one
line to `SCANNERS`, and name it in `[scan] scanners` (config validates names against this
table). `open_engine` is the one place the engine and its dependencies are built: the
daemon, `rescan` and the `scan` dry run all ask it, the dry run for a read-only variant.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import structlog

from firehose_mod.config import ConfigError, Settings
from firehose_mod.ingest.resolve import DidResolver
from firehose_mod.labels.signing import SigningKey
from firehose_mod.scan.audd import AuddClient, AuddScanner
from firehose_mod.scan.base import Media, ScanContext, Scanner
from firehose_mod.scan.catalogue import Catalogue, open_catalogue
from firehose_mod.scan.cover import CoverArtScanner, PdqBlocklist, opennsfw_score
from firehose_mod.scan.engine import ScanEngine
from firehose_mod.scan.media import SafeFetcher
from firehose_mod.scan.netguard import allowed_networks, outbound_client
from firehose_mod.scan.policy import load_policy
from firehose_mod.scan.selflabels import SelfLabelScanner
from firehose_mod.scan.text import TextBlocklist, TextScanner
from firehose_mod.store.db import close_shielded, open_db
from firehose_mod.store.label_log import LabelLog
from firehose_mod.store.open import open_decision_store

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Needs:
    """What a scanner factory may use."""

    settings: Settings
    catalogue: Catalogue | None


def _text(n: Needs) -> Scanner:
    s = n.settings
    return TextScanner(blocklist=TextBlocklist.load(s.text_blocklist) if s.text_blocklist else None)


def _cover(n: Needs) -> Scanner:
    s = n.settings
    return CoverArtScanner(blocklist=PdqBlocklist.load(s.pdq_blocklist) if s.pdq_blocklist else None,
                           scorer=opennsfw_score if s.cover_nsfw else None)


def _copyright(n: Needs) -> Scanner:
    assert n.catalogue is not None  # open_engine opens the catalogue when this scanner is enabled
    return n.catalogue.scanner


def _audd(n: Needs) -> Scanner:
    s = n.settings
    client = AuddClient(s.audd_api_token, endpoint=s.audd_endpoint, skip=s.audd_skip, every=s.audd_every,
                        limit=s.audd_limit, cost_per_unit_usd=s.audd_cost_per_unit_usd)
    return AuddScanner(client, max_units_per_track=s.audd_max_units_per_track)


SCANNERS: dict[str, Callable[[Needs], Scanner]] = {
    "self-labels": lambda n: SelfLabelScanner(),
    "text": _text,
    "cover-art": _cover,
    "copyright": _copyright,
    "audd": _audd,
}


def enabled(settings: Settings) -> list[str]:
    """The scanner names to run, in order: `[scan] scanners`, plus AudD when `[audd] enabled`."""
    unknown = [name for name in settings.scanners if name not in SCANNERS]
    if unknown:
        raise ConfigError(f"[scan] scanners (FIREHOSE_MOD_SCANNERS): unknown scanner(s) {unknown};"
                          f" known: {sorted(SCANNERS)}")
    names = list(dict.fromkeys(settings.scanners))
    if settings.audd_enabled and "audd" not in names:
        names.append("audd")
    return names


def build_scanners(settings: Settings, *, catalogue: Catalogue | None = None) -> list[Scanner]:
    """The enabled scanners, built by their factories."""
    needs = Needs(settings, catalogue)
    return [SCANNERS[name](needs) for name in enabled(settings)]


async def run_cpu(fn, *args):
    """Run CPU-heavy work (decoding, fingerprints, the NSFW model) in anyio's worker processes."""
    return await anyio.to_process.run_sync(fn, *args, cancellable=True)


def media_fetcher(settings: Settings, client, *, resolver: DidResolver | None = None,
                  cache_dir: Path | None = None) -> SafeFetcher:
    """The one way a `SafeFetcher` is built from settings (the engine's; the desk's fallback): the
    `[media]` limits, the outbound allow-list, DATA_DIR/media unless `cache_dir`."""
    mib = 1024 * 1024
    return SafeFetcher(
        resolver or DidResolver(client, settings.plc_url), cache_dir=cache_dir or settings.data_dir / "media",
        max_audio_bytes=settings.media_max_audio_mb * mib, max_image_bytes=settings.media_max_image_mb * mib,
        timeout=settings.media_timeout, max_redirects=settings.media_max_redirects,
        max_cache_bytes=settings.media_cache_max_mb * mib, allow_networks=allowed_networks(settings),
        allow_http=settings.media_allow_http)


@dataclass
class Scanning:
    """The engine and what was built for it; `client` is the vetted outbound HTTP client."""

    engine: ScanEngine
    media: Media
    client: Any


@asynccontextmanager
async def open_engine(settings: Settings, label_log: LabelLog | None = None, *, read_only: bool = False,
                      cache_dir: Path | None = None, wrap_media: Callable[[SafeFetcher], Media] | None = None,
                      cpu: Callable = run_cpu, resolver: DidResolver | None = None) -> AsyncIterator[Scanning]:
    """The scan engine and its dependencies, built once, closed on exit.

    `read_only` (the dry run): every store opened read-only, a label log with a throwaway key
    (nothing is signed), no effects performed. `cache_dir` (default DATA_DIR/media), `wrap_media`
    and `cpu` let the dry run read local files and note decode errors.
    """
    policy = load_policy(settings.policy_file)
    names = enabled(settings)
    async with AsyncExitStack() as stack:
        db_path = settings.db_path
        if read_only and settings.database_url:  # the labels in force are read from PostgreSQL, nothing written
            from firehose_mod.store.pg import PgLabelLog

            label_log = await stack.enter_async_context(PgLabelLog.connect(
                settings.database_url, SigningKey.generate(settings.key_curve), settings.did))
        elif read_only:
            labels_db = await open_db(db_path, readonly=True)
            stack.push_async_callback(close_shielded, labels_db)
            label_log = LabelLog(labels_db, labels_db, SigningKey.generate(settings.key_curve), settings.did)
        assert label_log is not None, "a writable engine writes through the daemon's label log"
        decisions = await stack.enter_async_context(open_decision_store(settings, readonly=read_only))
        catalogue = None
        if "copyright" in names:
            catalogue = await stack.enter_async_context(
                open_catalogue(db_path, synchronous=settings.db_synchronous, read_only=read_only,
                               database_url=settings.database_url))
        # DID documents and PDS endpoints are strangers: the vetted client for them too.
        client = await stack.enter_async_context(outbound_client(settings))
        fetcher = await stack.enter_async_context(media_fetcher(settings, client, resolver=resolver,
                                                                cache_dir=cache_dir))
        media = wrap_media(fetcher) if wrap_media else fetcher
        scanners = build_scanners(settings, catalogue=catalogue)
        engine = ScanEngine(scanners, policy, label_log, decisions, ScanContext(media=media, run_cpu=cpu),
                            timeout=settings.scan_timeout, catalogue=None if read_only else catalogue)
        log.info("scan.ready", scanners={s.name: s.version for s in scanners}, policy=policy.version,
                 policy_source=policy.source, read_only=read_only)
        yield Scanning(engine, media, client)
