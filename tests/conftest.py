"""Shared fixtures: real SQLite files under tmp_path, real servers on 127.0.0.1:0."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
import pytest

from firehose_mod.config import Settings, load_settings
from firehose_mod.daemon import open_label_log, run_server
from firehose_mod.server.app import LabelServer
from firehose_mod.store import LabelLog

from tests.helpers.review import d  # noqa: F401 - the review desk fixture, shared by the desk's tests


@pytest.fixture
def anyio_backend() -> str:
    # The atproto SDK's async clients use asyncio primitives, so the daemon runs on asyncio.
    return "asyncio"


@pytest.fixture
def settings(tmp_path) -> Settings:
    return load_settings(env={}, data_dir=tmp_path / "var", port=0, stream_poll_interval=0.05)


@dataclass
class Running:
    settings: Settings
    log: LabelLog
    server: LabelServer

    @property
    def ws_base(self) -> str:
        return f"ws://127.0.0.1:{self.server.port}"

    @property
    def http_base(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"


@pytest.fixture
async def label_log(settings) -> AsyncIterator[LabelLog]:
    async with open_label_log(settings) as log:
        yield log


@pytest.fixture
async def running(settings, label_log) -> AsyncIterator[Running]:
    """A label server on an ephemeral port over the `label_log` fixture's database."""
    async with anyio.create_task_group() as tg:
        server = await tg.start(run_server, settings, label_log)
        yield Running(settings, label_log, server)
        tg.cancel_scope.cancel()


def uri(n: int, did: str = "did:plc:uploader") -> str:
    return f"at://{did}/fm.plyr.track/3k{n:08d}"
