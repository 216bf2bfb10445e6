"""The source lock on PostgreSQL (store/source_lock.py's PgSourceLock): one ingest process per
database, whichever machine it runs on; a standby takes over when the holder is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import anyio
import asyncpg
import pytest

from firehose_mod.store.pg.label_log import DatabaseUnreachable
from firehose_mod.store.source_lock import PgSourceLock

pytestmark = pytest.mark.anyio

HOLD_LOCK = """
import sys, time, anyio
from firehose_mod.store.source_lock import PgSourceLock

async def main():
    lock = PgSourceLock(sys.argv[1], holder="ingest-a")
    assert await lock.acquire(wait=False)
    print("held", flush=True)
    time.sleep(600)

anyio.run(main)
"""


async def test_one_process_holds_the_source_and_a_standby_takes_over_when_it_is_killed(pg_url):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, pg_url], stdout=subprocess.PIPE, text=True)
    standby = PgSourceLock(pg_url, holder="ingest-b", poll=0.05)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert not await standby.acquire(wait=False) and not standby.held
        assert await standby.holder_now() == f"ingest-a pid {holder.pid}"
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        with anyio.fail_after(10):  # the server ends the dead client's session when its socket closes
            assert await standby.acquire()
        assert standby.held and await standby.holder_now() == f"ingest-b pid {os.getpid()}"
        again = PgSourceLock(pg_url, holder="again")
        assert not await again.acquire(wait=False)
        standby.release()
        assert not standby.held
        with anyio.fail_after(10):
            assert await again.acquire()
        again.release()
    finally:
        holder.kill()
        standby.release()


async def test_taking_a_lock_twice_in_one_process_is_one_hold(pg_url):
    lock = PgSourceLock(pg_url, holder="ingest-a")
    try:
        assert await lock.acquire(wait=False) and await lock.acquire(wait=False)
        lock.release()
        other = PgSourceLock(pg_url, holder="ingest-b", poll=0.05)
        with anyio.fail_after(10):  # the server ends the dropped session a moment after release()
            assert await other.acquire()  # released once: nothing left held
        other.release()
    finally:
        lock.release()


async def test_an_unreachable_server_is_named(pg_cluster):
    lock = PgSourceLock(pg_cluster.url("no_such_database"), holder="ingest-a")
    with pytest.raises(DatabaseUnreachable, match="no_such_database"):
        await lock.acquire(wait=False)


async def test_the_holder_learns_that_its_session_ended(pg_url):
    lock = PgSourceLock(pg_url, holder="ingest-a", poll=0.05)
    try:
        assert await lock.acquire(wait=False)
        conn = await asyncpg.connect(pg_url)
        try:  # an operator (or a failover proxy) ends the lock's session
            await conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                               " WHERE application_name LIKE 'firehose-mod source lock: ingest-a%'")
        finally:
            await conn.close()
        with anyio.fail_after(5):
            await lock.watch()
        assert not lock.held
        other = PgSourceLock(pg_url, holder="ingest-b")
        assert await other.acquire(wait=False)
        other.release()
    finally:
        lock.release()
