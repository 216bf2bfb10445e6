"""The small stores' rules on both backends: operators, service-auth nonces and reports, on
SQLite (store/operators.py, nonces.py, reports.py) and PostgreSQL (store/pg/ of the same names).
Each test runs once per backend; `stores.open(kind)` opens another store instance, with
connections of its own, over the same database, as another process would have."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

import aiosqlite
import anyio
import asyncpg
import pytest

from firehose_mod.review.actors import Operators, Unauthenticated, hash_token, new_token
from firehose_mod.store.db import open_db, transaction
from firehose_mod.store.nonces import NonceStore
from firehose_mod.store.open import open_nonce_store, open_operator_store, open_report_store
from firehose_mod.store.operators import OperatorExists, OperatorStore
from firehose_mod.store.pg.nonces import PgNonceStore
from firehose_mod.store.pg.operators import PgOperatorStore
from firehose_mod.store.pg.reports import PgReportStore, PgReportWriter
from firehose_mod.store.reports import ReportStore, ReportWriter

pytestmark = pytest.mark.anyio

LABEL_LOG_BACKENDS = ("sqlite", "postgres")

REFUSED = (sqlite3.DatabaseError, asyncpg.PostgresError)
SQLITE = {"operators": OperatorStore, "nonces": NonceStore, "reports": ReportStore}
POSTGRES = {"operators": PgOperatorStore, "nonces": PgNonceStore, "reports": PgReportStore}


@dataclass
class Stores:
    """Store instances of one backend over one database; see the module docstring."""

    path: object
    url: str | None
    opened: list

    async def open(self, kind: str):
        store = await (POSTGRES[kind].open(self.url) if self.url else SQLITE[kind].open(self.path))
        self.opened.append(store)
        return store

    async def raw(self, sql: str) -> None:
        """One statement on a connection of its own (SQL both dialects read, no parameters)."""
        if self.url:
            conn = await asyncpg.connect(self.url)
            try:
                await conn.execute(sql)
            finally:
                await conn.close()
        else:
            async with aiosqlite.connect(self.path, isolation_level=None) as conn:
                await conn.execute(sql)

    async def add_report(self, **fields) -> int:
        """A report written in a transaction of its own (the review desk's, in the daemon)."""
        row = {"reporter": "did:plc:alice", "via_service": None, "reason_type": "com.atproto.moderation.defs#reasonOther",
               "reason": "mine", "subject": {"uri": "at://did:plc:artist/fm.plyr.track/1"},
               "subject_uri": "at://did:plc:artist/fm.plyr.track/1", "subject_cid": None,
               "subject_did": "did:plc:artist", "appeal": False, "value": "copyright", "item_id": None,
               "counter_notice": None, "mod_tool": None, "created": "2026-01-01T00:00:00.000Z", **fields}
        if self.url:
            conn = await asyncpg.connect(self.url)
            try:
                async with conn.transaction():
                    return await PgReportWriter(conn).add(**row)
            finally:
                await conn.close()
        db = await open_db(self.path)
        try:
            async with transaction(db):
                return await ReportWriter(db).add(**row)
        finally:
            await db.close()


@pytest.fixture
async def stores(tmp_path, backend, request):
    url = request.getfixturevalue("pg_url") if backend == "postgres" else None
    opened: list = []
    yield Stores(tmp_path / "db.sqlite3", url, opened)
    for store in opened:
        await store.close()


async def test_the_settings_choose_each_store(settings, backend):
    pg = backend == "postgres"
    async with open_operator_store(settings) as operators, open_nonce_store(settings) as nonces, \
            open_report_store(settings) as reports:
        assert isinstance(operators, PgOperatorStore if pg else OperatorStore)
        assert isinstance(nonces, PgNonceStore if pg else NonceStore)
        assert isinstance(reports, PgReportStore if pg else ReportStore)
        assert await nonces.remember("did:plc:a", "j1", 10**10)
        assert await reports.since(reporter="did:plc:a", after="") == 0
        assert await operators.active_admins() == 0


# -- operators -------------------------------------------------------------------------------------
async def test_an_operator_is_found_by_name_and_by_token_hash(stores):
    store = await stores.open("operators")
    token = new_token()
    row = await store.add("ann", "admin", hash_token(token), created_by="local:root")
    assert (row.name, row.role, row.created_by, row.active) == ("ann", "admin", "local:root", True)
    assert await store.by_name("ann") == row
    assert await store.by_hash(hash_token(token)) == (row, hash_token(token))
    assert await store.by_hash(hash_token(new_token())) is None and await store.by_name("bob") is None
    await store.add("bob", "moderator", hash_token(new_token()), created_by="ann")
    assert [r.name for r in await store.all()] == ["ann", "bob"]
    assert await store.active_admins() == 1


async def test_a_name_is_never_reused_even_after_revocation(stores):
    store = await stores.open("operators")
    await store.add("ann", "admin", hash_token(new_token()), created_by="local:root")
    assert await store.revoke("ann", "local:root")
    with pytest.raises(OperatorExists):
        await store.add("ann", "moderator", hash_token(new_token()), created_by="local:root")
    assert not await store.revoke("ann", "local:root")  # already revoked: stays as it was
    assert not await store.revoke("nobody", "local:root")
    assert (await store.by_name("ann")).revoked_by == "local:root" and await store.active_admins() == 0


async def test_a_token_revoked_by_another_process_is_refused_at_once(stores):
    ours, theirs = Operators(await stores.open("operators")), await stores.open("operators")
    token = new_token()
    await theirs.add("agent-1", "agent", hash_token(token), created_by="ann")
    assert (await ours.authenticate(token)).name == "agent-1"
    assert await theirs.revoke("agent-1", "ann")
    with pytest.raises(Unauthenticated, match="revoked"):
        await ours.authenticate(token)


async def test_revocation_is_final_and_operators_are_never_deleted(stores):
    store = await stores.open("operators")
    await store.add("ann", "admin", hash_token(new_token()), created_by="local:root")
    with pytest.raises(REFUSED, match="keeps its name"):
        await stores.raw("UPDATE operators SET role = 'agent' WHERE name = 'ann'")
    await store.revoke("ann", "local:root")
    with pytest.raises(REFUSED, match="stays revoked"):
        await stores.raw("UPDATE operators SET revoked = NULL WHERE name = 'ann'")
    with pytest.raises(REFUSED, match="never deleted"):
        await stores.raw("DELETE FROM operators WHERE name = 'ann'")
    assert (await store.by_name("ann")).revoked is not None


async def test_a_session_ends_at_sign_out_and_shows_its_operators_revocation(stores):
    store, other = await stores.open("operators"), await stores.open("operators")
    await store.add("ann", "admin", hash_token(new_token()), created_by="local:root")
    await store.open_session(b"s" * 32, "ann", "csrf-1", "2999-01-01T00:00:00.000000Z")
    row, csrf, expires = await other.session(b"s" * 32)
    assert (row.name, row.active, csrf, expires) == ("ann", True, "csrf-1", "2999-01-01T00:00:00.000000Z")
    await other.revoke("ann", "local:root")
    assert not (await store.session(b"s" * 32))[0].active
    await other.end_session(b"s" * 32)
    assert await store.session(b"s" * 32) is None and await store.session(b"x" * 32) is None


# -- nonces ----------------------------------------------------------------------------------------
async def test_a_nonce_is_accepted_once_until_it_expires(stores):
    store = await stores.open("nonces")
    assert await store.remember("did:plc:a", "j1", 100, now=50)
    assert not await store.remember("did:plc:a", "j1", 100, now=60)
    assert await store.remember("did:plc:b", "j1", 100, now=60)  # another issuer's jti
    assert await store.remember("did:plc:a", "j1", 300, now=101)  # expired: accepted again, until 300
    assert not await store.remember("did:plc:a", "j1", 300, now=200)
    assert await store.count() == 2
    assert await store.prune(now=150) == 1 and await store.count() == 1


async def test_a_nonce_two_processes_race_on_is_accepted_once(stores):
    a, b = await stores.open("nonces"), await stores.open("nonces")

    async def remember(store, jti: str, accepted: list[bool]) -> None:
        accepted.append(await store.remember("did:plc:a", jti, 10**10))

    for n in range(5):
        accepted: list[bool] = []
        async with anyio.create_task_group() as tg:
            for store in (a, b, a, b, a, b):
                tg.start_soon(remember, store, f"j{n}", accepted)
        assert sorted(accepted) == [False] * 5 + [True]


# -- reports ---------------------------------------------------------------------------------------
async def test_reports_are_read_back_as_received(stores):
    store = await stores.open("reports")
    first = await stores.add_report(item_id=7, counter_notice={"statement": "mine"}, mod_tool={"name": "x"})
    await stores.add_report(reporter="did:plc:bob", item_id=7, created="2026-01-01T00:00:05.000Z")
    appeal = await stores.add_report(appeal=True, item_id=8, created="2026-01-01T00:00:09.000Z")
    got = await store.get(first)
    assert (got.subject, got.appeal, got.item_id, got.counter_notice, got.mod_tool) == (
        {"uri": "at://did:plc:artist/fm.plyr.track/1"}, False, 7, {"statement": "mine"}, {"name": "x"})
    assert await store.get(appeal + 100) is None
    assert [r.reporter for r in await store.for_item(7)] == ["did:plc:alice", "did:plc:bob"]
    assert [r.id for r in await store.appeals_by("did:plc:alice")] == [appeal]
    uri = "at://did:plc:artist/fm.plyr.track/1"
    assert len(await store.about(uri, "copyright", appeal=False)) == 2
    assert [r.id for r in await store.about(uri, "copyright", appeal=True)] == [appeal]


async def test_the_rate_limit_counts_reports_after_a_time(stores):
    store = await stores.open("reports")
    for second in (1, 2, 3):
        await stores.add_report(created=f"2026-01-01T00:00:0{second}.000Z")
    assert await store.since(reporter="did:plc:alice", after="2026-01-01T00:00:01.000Z") == 2
    assert await store.since(subject_uri="at://did:plc:artist/fm.plyr.track/1", after="2026") == 3
    assert await store.since(reporter="did:plc:bob", after="2026") == 0


async def test_reports_are_kept_as_received(stores):
    await stores.open("reports")  # migrates
    await stores.add_report()
    with pytest.raises(REFUSED, match="kept as received"):
        await stores.raw("UPDATE reports SET reason = 'edited'")
    with pytest.raises(REFUSED, match="kept as received"):
        await stores.raw("DELETE FROM reports")
