"""Several processes over one database (`run --role`): the source lock, and six real
processes (an ingest leader and its standby, two scan workers, two stream servers) with one of
each killed mid-stream."""

from __future__ import annotations

import io
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import anyio
import httpx
import pytest

from firehose_mod.store.source_lock import SourceLock
from tests.fakes.jetstream import T0, FakeJetstream, commit, track_record
from tests.fakes.media_server import MediaServer
from tests.procs import env_for, free_port
from tests.stream_client import Received, decode, subscribe
from firehose_mod.scan.cover import CoverLimits, analyse_cover
from tests.test_cover import artwork

pytestmark = pytest.mark.anyio

ARTIST = "did:plc:artist"


def track_event(i: int, cover: str = "https://cdn.plyr.fm/images/abc.jpg") -> dict:
    record = track_record(f"Track {i}", imageUrl=cover)
    return commit(T0 + i, ARTIST, "fm.plyr.track", f"3ktrack{i:05d}", "create", record)


# The leases' behaviour tests run on both backends: tests/test_ingest_store_backends.py.


# -- the source lock ------------------------------------------------------------------------------
HOLD_LOCK = """
import sys, time
from pathlib import Path
from firehose_mod.store.source_lock import SourceLock
lock = SourceLock(Path(sys.argv[1]), holder="ingest-a")
assert lock.try_acquire()
print("held", flush=True)
time.sleep(600)
"""


async def test_one_process_holds_the_source_and_a_standby_takes_over_when_it_is_killed(tmp_path):
    db = tmp_path / "firehose-mod.sqlite3"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(db)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        standby = SourceLock(db, holder="ingest-b", poll=0.05)
        assert not standby.try_acquire()
        assert standby.holder_now() == f"ingest-a pid {holder.pid}"
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        with anyio.fail_after(5):
            await standby.acquire()
        assert standby.held and standby.holder_now() == f"ingest-b pid {os.getpid()}"
        standby.release()
        assert SourceLock(db, holder="again").try_acquire()
    finally:
        holder.kill()


# -- six processes ---------------------------------------------------------------------------------
LABEL_LOG_BACKENDS = ("sqlite", "postgres")


class Db:
    """Reads the shared database as an operator would, from outside the processes: the SQLite
    file, or the PostgreSQL database at `url`."""

    def __init__(self, path: Path, url: str | None):
        self.path, self.url = path, url

    async def rows(self, sql: str) -> list[tuple]:
        if self.url:
            import asyncpg

            conn = await asyncpg.connect(self.url)
            try:
                return [tuple(r) for r in await conn.fetch(sql)]
            except asyncpg.UndefinedTableError:
                return []
            finally:
                await conn.close()
        try:
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5)
            try:
                return conn.execute(sql).fetchall()
            finally:
                conn.close()
        except sqlite3.OperationalError:
            return []

    async def head(self) -> int:
        rows = await self.rows("SELECT max(seq) FROM labels")
        return rows[0][0] or 0 if rows else 0


class Proc:
    def __init__(self, role: str, env: dict, data: Path):
        self.role, self.port = role, free_port()
        self.log = data.parent / f"{role}.log"
        self.proc = subprocess.Popen([sys.executable, "-m", "firehose_mod", "run", "--role", role],
                                     env={**env, "FIREHOSE_MOD_PORT": str(self.port)},
                                     stdout=subprocess.DEVNULL, stderr=open(self.log, "ab"))

    async def healthy(self) -> None:
        async with httpx.AsyncClient() as client:
            with anyio.fail_after(40):
                while True:
                    assert self.proc.poll() is None, f"{self.role} exited: {self.log.read_text()[-2000:]}"
                    try:
                        if (await client.get(f"http://127.0.0.1:{self.port}/xrpc/_health")).status_code == 200:
                            return
                    except httpx.HTTPError:
                        pass
                    await anyio.sleep(0.1)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


async def follow(servers: list[Proc], got: Received, total: int) -> None:
    """A subscriber that reconnects to the next live server with its last seq as the cursor."""
    turn = 0
    while len(got.seqs) < total:
        server = servers[turn % len(servers)]
        turn += 1
        if server.proc.poll() is not None:
            continue
        try:
            async with subscribe(f"ws://127.0.0.1:{server.port}", got.seqs[-1] if got.seqs else 0) as ws:
                while len(got.seqs) < total:
                    header, body = decode(await ws.recv())
                    if header.get("t") == "#labels":
                        got.seqs.append(body["seq"])
        except Exception:  # the server died under us: go on with the next one
            await anyio.sleep(0.05)


async def wait_for(what: str, check, timeout: float = 60) -> None:
    """Until the async `check` is true (`what`: for the reader of a timeout)."""
    with anyio.fail_after(timeout):
        while not await check():
            await anyio.sleep(0.05)


async def _at_least(db: Db, seq: int) -> bool:
    return await db.head() >= seq


@pytest.mark.slow
async def test_ingest_standby_two_workers_two_servers_survive_one_of_each_killed(tmp_path, backend, request):
    data = tmp_path / "var"
    url = request.getfixturevalue("pg_url") if backend == "postgres" else None
    db = Db(data / "firehose-mod.sqlite3", url)
    total = 48
    media = MediaServer()
    png = io.BytesIO()
    artwork(3).save(png, format="PNG")
    media.files["/cover.png"] = (png.getvalue(), "image/png")
    (tmp_path / "cover.png").write_bytes(png.getvalue())
    known_bad = analyse_cover(str(tmp_path / "cover.png"), CoverLimits(), None, True).pdq[0]
    (tmp_path / "pdq.txt").write_text(f"{known_bad} porn\n")  # every track's cover: one label per track
    procs: list[Proc] = []
    with media:
        cover = f"{media.base}/cover.png"
        fake = FakeJetstream([track_event(i, cover) for i in range(16)], pace=0.01)
        async with anyio.create_task_group() as tg:
            await tg.start(fake.serve)
            env = env_for(data, None, FIREHOSE_MOD_JETSTREAM_ENDPOINTS=fake.url, FIREHOSE_MOD_JETSTREAM_COMPRESS="false",
                          FIREHOSE_MOD_SCANNERS="cover-art", FIREHOSE_MOD_COVER_NSFW="false",
                          FIREHOSE_MOD_PDQ_BLOCKLIST=str(tmp_path / "pdq.txt"),
                          FIREHOSE_MOD_MEDIA_ALLOW_NETWORKS="127.0.0.1/32", FIREHOSE_MOD_MEDIA_ALLOW_HTTP="true",
                          FIREHOSE_MOD_SCAN_LEASE="3", FIREHOSE_MOD_STREAM_POLL_INTERVAL="0.05",
                          **({"FIREHOSE_MOD_DATABASE_URL": url} if url else {}))
            try:
                ingest_a = Proc("ingest-a", env, data)
                procs.append(ingest_a)
                await ingest_a.healthy()  # the leader first: it holds the source lock
                procs += [Proc(r, env, data) for r in ("ingest-b", "scan-1", "serve-1", "serve-2")]
                ingest_b, scan_1, serve_1, serve_2 = procs[1:]
                for p in procs[1:]:
                    await p.healthy()
                subscribers = [Received() for _ in range(4)]
                servers = [serve_1, serve_2]
                for i, got in enumerate(subscribers):
                    tg.start_soon(follow, servers[i % 2:] + servers[:i % 2], got, total)

                await wait_for("the first labels", lambda: _at_least(db, 16))
                ingest_a.kill()  # the leader dies: the standby takes the source from the saved cursor
                serve_1.kill()  # half the subscribers lose their server mid-stream
                fake.append(*[track_event(i, cover) for i in range(16, 32)])
                await wait_for("the standby's labels", lambda: _at_least(db, 32))

                media.held.set()  # a scan that stays in flight until the test lets it go
                fake.append(track_event(32, f"{media.base}/hold/32"))
                async def held() -> bool:
                    return await db.rows("SELECT uri FROM scan_jobs WHERE state = 'running' AND worker = 'scan-1'") \
                        == [(f"at://{ARTIST}/fm.plyr.track/3ktrack00032",)]

                await wait_for("scan-1 holding it", held)
                scan_1.kill()  # with a leased job in hand
                scan_2 = Proc("scan-2", env, data)
                procs.append(scan_2)
                await scan_2.healthy()
                media.held.clear()
                fake.append(*[track_event(i, cover) for i in range(33, total)])
                await wait_for("every label", lambda: _at_least(db, total))
                with anyio.fail_after(60):
                    while any(len(got.seqs) < total for got in subscribers):
                        await anyio.sleep(0.05)
                async with httpx.AsyncClient() as client:
                    token = (data / "admin.token").read_text().strip()
                    status = (await client.get(f"http://127.0.0.1:{ingest_b.port}/admin/status",
                                               headers={"authorization": f"Bearer {token}"})).json()
            finally:
                for p in procs:
                    p.proc.kill()
                tg.cancel_scope.cancel()
    for got in subscribers:
        assert got.seqs == list(range(1, total + 1))  # every label once, in order, across a server's death
    labels = await db.rows("SELECT uri, val, neg FROM labels ORDER BY seq")
    assert len(labels) == total and len({u for u, _, _ in labels}) == total  # one label per track: none twice
    jobs = await db.rows("SELECT uri, state, attempts, worker FROM scan_jobs ORDER BY id")
    assert len(jobs) == total and all(state == "done" for _, state, _, _ in jobs)  # none lost
    retried = {uri.rsplit("/", 1)[1]: (attempts, worker) for uri, _, attempts, worker in jobs if attempts > 1}
    assert retried == {"3ktrack00032": (2, "scan-2")}  # the dead worker's job, taken once more after its lease
    assert status["role"] == "ingest-b" and status["ingest"]["leader"] is True
    assert "ingest.took_over" in (tmp_path / "ingest-b.log").read_text()
    if url:  # every process kept everything in PostgreSQL: no SQLite file was made
        assert not (data / "firehose-mod.sqlite3").exists()
    resumed = [c for c in fake.connections[1:] if "cursor=" in c]
    assert resumed, fake.connections  # the standby started from the cursor the leader saved


@pytest.mark.backends("postgres")
async def test_a_leader_whose_postgresql_session_ends_stops_and_the_standby_takes_the_source(tmp_path, backend,
                                                                                              pg_url):
    import asyncpg

    data = tmp_path / "var"
    fake = FakeJetstream([track_event(i) for i in range(4)], pace=0.01)
    procs: list[Proc] = []
    async with anyio.create_task_group() as tg:
        await tg.start(fake.serve)
        env = env_for(data, None, FIREHOSE_MOD_JETSTREAM_ENDPOINTS=fake.url, FIREHOSE_MOD_JETSTREAM_COMPRESS="false",
                      FIREHOSE_MOD_SCANNERS="text", FIREHOSE_MOD_DATABASE_URL=pg_url)
        try:
            ingest_a = Proc("ingest-a", env, data)
            procs.append(ingest_a)
            await ingest_a.healthy()
            ingest_b = Proc("ingest-b", env, data)
            procs.append(ingest_b)
            await ingest_b.healthy()
            conn = await asyncpg.connect(pg_url)
            try:  # the leader's session ends under it (a failover, an admin, a network cut)
                ended = await conn.fetch("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                                         " WHERE application_name LIKE 'firehose-mod source lock: ingest-a%'")
            finally:
                await conn.close()
            assert len(ended) == 1
            with anyio.fail_after(30):
                while ingest_a.proc.poll() is None:
                    await anyio.sleep(0.1)
            async with httpx.AsyncClient() as client:
                token = (data / "admin.token").read_text().strip()
                with anyio.fail_after(30):
                    while True:
                        status = (await client.get(f"http://127.0.0.1:{ingest_b.port}/admin/status",
                                                   headers={"authorization": f"Bearer {token}"})).json()
                        if status["ingest"]["leader"]:
                            break
                        await anyio.sleep(0.1)
        finally:
            for p in procs:
                p.proc.kill()
            tg.cancel_scope.cancel()
    assert ingest_a.proc.returncode == 2  # stopped, saying why: systemd starts it again, as a standby
    assert "lost the source lock" in ingest_a.log.read_text()
    assert "ingest.took_over" in ingest_b.log.read_text()
