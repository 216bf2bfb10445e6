"""Shared fixtures: real SQLite files under tmp_path, real servers on 127.0.0.1:0."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import anyio
import pytest

from firehose_mod.config import Settings, load_settings
from firehose_mod.daemon import open_label_log, run_server
from firehose_mod.server.app import LabelServer
from firehose_mod.store import LabelLog

from tests.helpers.pg import PgCluster, PostgresMissing
from tests.helpers.review import d  # noqa: F401 - the review desk fixture, shared by the desk's tests


@pytest.fixture
def anyio_backend() -> str:
    # The atproto SDK's async clients use asyncio primitives, so the daemon runs on asyncio.
    return "asyncio"


# -- label log backends ------------------------------------------------------------------------
# A test module that sets `LABEL_LOG_BACKENDS = ("sqlite", "postgres")` runs each of its tests that
# use the `settings` / `label_log` / `running` fixtures once per backend; `@pytest.mark.backends("sqlite")`
# keeps one test on the backends it names (a test that opens the SQLite file itself). Elsewhere the
# label log is SQLite, as it always was.


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "backends(*names): run this test on these label log backends only")


def pytest_generate_tests(metafunc) -> None:
    backends = getattr(metafunc.module, "LABEL_LOG_BACKENDS", None)
    if backends and "backend" in metafunc.fixturenames:
        only = metafunc.definition.get_closest_marker("backends")
        metafunc.parametrize("backend", only.args if only else backends, indirect=True)


@pytest.fixture
def backend(request) -> str:
    """The label log backend of this test: "sqlite" (the default) or "postgres"."""
    return getattr(request, "param", "sqlite")


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """A throwaway PostgreSQL server for the whole test session (tests/helpers/pg.py)."""
    try:
        cluster = PgCluster.start()
    except PostgresMissing as exc:
        if os.environ.get("CI"):
            raise  # .ci/run installs PostgreSQL: missing there is a broken CI, not a skip
        pytest.skip(str(exc))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> Iterator[str]:
    """A fresh, empty database on the session's PostgreSQL, dropped after the test."""
    url = pg_cluster.create_database()
    try:
        yield url
    finally:
        pg_cluster.drop_database(url)


@pytest.fixture
def settings(tmp_path, backend, request) -> Settings:
    database_url = request.getfixturevalue("pg_url") if backend == "postgres" else None
    return load_settings(env={}, data_dir=tmp_path / "var", port=0, stream_poll_interval=0.05,
                         database_url=database_url)


@pytest.fixture
async def open_ingest(tmp_path, backend, request):
    """Opens ingest stores over one database of this test's backend (store/ingest.py's
    IngestStore or store/pg/ingest.py's PgIngestStore): each call is another instance with
    connections of its own, as another process would have. All are closed after the test."""
    from firehose_mod.store.ingest import IngestStore
    from firehose_mod.store.pg.ingest import PgIngestStore

    url = request.getfixturevalue("pg_url") if backend == "postgres" else None
    opened = []

    async def open_store():
        store = await PgIngestStore.open(url) if url else await IngestStore.open(tmp_path / "db.sqlite3")
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        await store.close()


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
