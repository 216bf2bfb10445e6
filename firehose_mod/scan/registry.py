"""The explicit list of scanners, built from the settings, and the context they run in."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import structlog

from firehose_mod.config import Settings
from firehose_mod.scan.base import ScanContext, Scanner
from firehose_mod.store.db import close_shielded

log = structlog.get_logger(__name__)


def build_scanners(settings: Settings, *, catalogue=None) -> list[Scanner]:
    """The scanners named in `[scan] scanners` (and AudD when `[audd] enabled`), in that order."""
    scanners: list[Scanner] = []
    for name in settings.scanners:
        if name == "self-labels":
            from firehose_mod.scan.selflabels import SelfLabelScanner

            scanners.append(SelfLabelScanner())
        elif name == "text":
            from firehose_mod.scan.text import TextBlocklist, TextScanner

            blocklist = TextBlocklist.load(settings.text_blocklist) if settings.text_blocklist else None
            scanners.append(TextScanner(blocklist=blocklist))
        elif name == "cover-art":
            from firehose_mod.scan.cover import CoverArtScanner, PdqBlocklist, opennsfw_score

            blocklist = PdqBlocklist.load(settings.pdq_blocklist) if settings.pdq_blocklist else None
            scanners.append(CoverArtScanner(blocklist=blocklist, scorer=opennsfw_score if settings.cover_nsfw else None))
        elif name == "copyright" and catalogue is not None:
            scanners.append(catalogue.scanner())
    if settings.audd_enabled or "audd" in settings.scanners:
        from firehose_mod.scan.audd import AuddClient, AuddScanner

        client = AuddClient(settings.audd_api_token, endpoint=settings.audd_endpoint, skip=settings.audd_skip,
                            every=settings.audd_every, limit=settings.audd_limit,
                            cost_per_unit_usd=settings.audd_cost_per_unit_usd)
        audd = AuddScanner(client, max_units_per_track=settings.audd_max_units_per_track)
        audd.after_local = True  # runs after the local index, and only when it found nothing
        audd.values = frozenset({"copyright-violation"})
        scanners.append(audd)
    return scanners


@dataclass
class Catalogue:
    """The fingerprint catalogue: its store and the in-memory index built from it."""

    store: Any
    index: Any
    _scanner: Any = None

    def scanner(self) -> Scanner:
        from firehose_mod.scan.copyright import CopyrightScanner

        if self._scanner is None:
            self._scanner = CopyrightScanner(self.store, self.index)
            self._scanner.values = frozenset({"copyright-violation"})
        return self._scanner

    async def follow_imports(self, interval: float = 30.0) -> None:
        """Reload the index when an operator imports or removes references from another process
        (`firehose-mod catalogue add/remove` while the daemon runs). Runs until cancelled."""
        from firehose_mod.scan.copyright import load_index
        from firehose_mod.scan.fingerprint import FingerprintIndex

        seen = await self.store.reference_signature()
        while True:
            await anyio.sleep(interval)
            now = await self.store.reference_signature()
            if now != seen:
                fresh = FingerprintIndex()
                loaded = await load_index(self.store, fresh)
                self.index = fresh  # swapped whole: a scan in flight finishes on the old one
                if self._scanner is not None:
                    self._scanner.index = fresh
                seen = now
                log.info("catalogue.reloaded", **loaded)


@asynccontextmanager
async def open_catalogue(settings: Settings) -> AsyncIterator[Catalogue]:
    """Open the catalogue and load every fingerprint into memory (about 1 s per 1,000 tracks)."""
    from firehose_mod.scan.copyright import load_index
    from firehose_mod.scan.fingerprint import FingerprintIndex
    from firehose_mod.store.catalogue import CatalogueStore

    store = await CatalogueStore.open(settings.db_path, synchronous=settings.db_synchronous)
    try:
        index = FingerprintIndex()
        loaded = await load_index(store, index)
        log.info("catalogue.loaded", **loaded)
        yield Catalogue(store, index)
    finally:
        await close_shielded(store)


async def run_cpu(fn, *args):
    """Run CPU-heavy work (decoding, fingerprints, the NSFW model) in anyio's worker processes."""
    return await anyio.to_process.run_sync(fn, *args, cancellable=True)


@asynccontextmanager
async def scan_context(settings: Settings, resolver=None) -> AsyncIterator[ScanContext]:
    """Media fetcher and CPU pool for the scanners, closed on exit."""
    from firehose_mod.ingest.resolve import DidResolver
    from firehose_mod.scan.media import SafeFetcher
    from firehose_mod.scan.netguard import outbound_client

    async with outbound_client(settings) as client:  # DID documents and PDS endpoints are strangers
        resolver = resolver or DidResolver(client, settings.plc_url)
        fetcher = SafeFetcher(
            resolver,
            cache_dir=settings.data_dir / "media",
            max_audio_bytes=settings.media_max_audio_mb * 1024 * 1024,
            max_image_bytes=settings.media_max_image_mb * 1024 * 1024,
            timeout=settings.media_timeout,
            max_redirects=settings.media_max_redirects,
            max_cache_bytes=settings.media_cache_max_mb * 1024 * 1024,
            allow_networks=settings.media_allow_networks,
            allow_http=settings.media_allow_http,
        )
        async with fetcher:
            yield ScanContext(media=fetcher, run_cpu=run_cpu)
