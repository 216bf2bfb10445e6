"""The fingerprint catalogue as the daemon holds it: its store and the in-memory index.

The catalogue is the copyright scanner's one dependency and the one place that writes
fingerprints while the daemon runs: the engine hands it the `IndexUpload` effects scanners
describe, and a watcher reloads the index when an operator imports or removes references
from another process.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import structlog

from firehose_mod.scan.base import IndexUpload
from firehose_mod.scan.copyright import CopyrightScanner, load_index
from firehose_mod.scan.fingerprint import Entries, FingerprintIndex
from firehose_mod.store.catalogue import CatalogueStore
from firehose_mod.store.db import close_shielded

log = structlog.get_logger(__name__)


class Catalogue:
    """The catalogue store, the index built from it, and the copyright scanner over both."""

    def __init__(self, store: CatalogueStore, index: FingerprintIndex):
        self.store = store
        self.index = index
        self.scanner = CopyrightScanner(store, index)

    async def index_upload(self, upload: IndexUpload) -> None:
        """Keep a scanned upload's fingerprint (a new version replaces the old one)."""
        await self.store.add_upload(
            upload.uri, upload.entries, fp_version=upload.fp_version, entry_count=upload.entry_count,
            title=upload.title, artist=upload.artist, source=upload.uri, duration=upload.duration,
            sha256=upload.sha256, chromaprint=upload.chromaprint,
        )
        await anyio.to_thread.run_sync(self.index.add, upload.uri, Entries.from_bytes(upload.entries))

    async def follow_imports(self, interval: float = 30.0) -> None:
        """Reload the index when an operator imports or removes references from another process
        (`firehose-mod catalogue add/remove` while the daemon runs). Runs until cancelled."""
        seen = await self.store.reference_signature()
        while True:
            await anyio.sleep(interval)
            now = await self.store.reference_signature()
            if now != seen:
                fresh = FingerprintIndex()
                loaded = await load_index(self.store, fresh)
                self.index = self.scanner.index = fresh  # swapped whole: a scan in flight ends on the old one
                seen = now
                log.info("catalogue.reloaded", **loaded)


@asynccontextmanager
async def open_catalogue(db_path: Path, *, synchronous: str = "FULL", read_only: bool = False,
                         ) -> AsyncIterator[Catalogue]:
    """Open the catalogue and load every fingerprint into memory (about 1 s per 1,000 tracks)."""
    store = await CatalogueStore.open(db_path, synchronous=synchronous, readonly=read_only)
    try:
        index = FingerprintIndex()
        loaded = await load_index(store, index)
        log.info("catalogue.loaded", read_only=read_only, **loaded)
        yield Catalogue(store, index)
    finally:
        await close_shielded(store)
