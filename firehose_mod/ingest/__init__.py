"""Ingest: network sources (Jetstream, relay firehose, backfill) decoded into typed events.

Decoding is a pure function per source; sources only move bytes and reconnect. Events go
to the store in the same transaction as the source cursor they came with.
"""

from firehose_mod.ingest.events import DeadLetter, RepoEvent, TrackEvent

__all__ = ["DeadLetter", "RepoEvent", "TrackEvent"]
