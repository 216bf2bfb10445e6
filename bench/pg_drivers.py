"""psycopg 3 against asyncpg on the label log's two hot paths, on a throwaway local PostgreSQL.

Write: 1,000 signed labels INSERTed in one transaction (rows made beforehand, so signing is
not measured). Read: the backfill page, `seq > N ORDER BY seq LIMIT 1000` with the bytea cbor
column, walking a 100k-label table from 0. Each figure is the median of several rounds.

    pip install 'psycopg[binary]'     # not a dependency: only this comparison needs it
    python -m bench.pg_drivers        # figures go to bench/POSTGRES.md by hand
"""

from __future__ import annotations

import asyncio
import statistics
import time

import asyncpg
import psycopg

from firehose_mod.labels import Label, SigningKey
from tests.helpers.pg import PgCluster

SCHEMA = """
CREATE TABLE labels (seq bigint PRIMARY KEY, src text NOT NULL, uri text NOT NULL, cid text, val text NOT NULL,
    neg boolean NOT NULL, cts text NOT NULL, exp text, sig bytea NOT NULL, key_id text NOT NULL, cbor bytea NOT NULL)
"""
INSERT_PG = ("INSERT INTO labels (seq, src, uri, cid, val, neg, cts, exp, sig, key_id, cbor)"
             " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)")
INSERT_A = ("INSERT INTO labels (seq, src, uri, cid, val, neg, cts, exp, sig, key_id, cbor)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)")
READ_PG = "SELECT seq, cbor FROM labels WHERE seq > %s ORDER BY seq LIMIT 1000"
READ_A = "SELECT seq, cbor FROM labels WHERE seq > $1 ORDER BY seq LIMIT 1000"
TOTAL = 100_000


def make_rows(start: int, n: int, key: SigningKey) -> list[tuple]:
    rows = []
    for i in range(start, start + n):
        label = key.sign(Label(src="did:plc:labeler", uri=f"at://did:plc:u{i % 977}/fm.plyr.track/3k{i:010d}",
                               val="porn", cts="2026-12-02T06:00:00.000Z"))
        rows.append((i, label.src, label.uri, None, label.val, False, label.cts, None, label.sig, key.did_key,
                     label.to_cbor()))
    return rows


async def bench_psycopg(url: str, batches: list[list[tuple]]) -> dict[str, float]:
    conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
    await conn.execute(SCHEMA)
    writes = []
    for rows in batches:
        t = time.perf_counter()
        async with conn.transaction():
            async with conn.cursor() as cur:
                await cur.executemany(INSERT_PG, rows)
        writes.append(time.perf_counter() - t)
    reads = []
    for _ in range(3):
        t, seq = time.perf_counter(), 0
        while True:
            cur = await conn.execute(READ_PG, (seq,), binary=True)
            rows = await cur.fetchall()
            if not rows:
                break
            seq = rows[-1][0]
        reads.append(time.perf_counter() - t)
    await conn.close()
    return {"write_ms": statistics.median(writes) * 1000, "read_s": statistics.median(reads)}


async def bench_asyncpg(url: str, batches: list[list[tuple]]) -> dict[str, float]:
    conn = await asyncpg.connect(url)
    await conn.execute(SCHEMA)
    writes = []
    for rows in batches:
        t = time.perf_counter()
        async with conn.transaction():
            await conn.executemany(INSERT_A, rows)
        writes.append(time.perf_counter() - t)
    reads = []
    stmt = await conn.prepare(READ_A)
    for _ in range(3):
        t, seq = time.perf_counter(), 0
        while True:
            rows = await stmt.fetch(seq)
            if not rows:
                break
            seq = rows[-1][0]
        reads.append(time.perf_counter() - t)
    await conn.close()
    return {"write_ms": statistics.median(writes) * 1000, "read_s": statistics.median(reads)}


async def main() -> None:
    key = SigningKey.generate()
    batches = [make_rows(1 + b * 1000, 1000, key) for b in range(TOTAL // 1000)]
    cluster = PgCluster.start()
    try:
        for name, fn in (("psycopg", bench_psycopg), ("asyncpg", bench_asyncpg),
                         ("psycopg", bench_psycopg), ("asyncpg", bench_asyncpg)):
            url = cluster.create_database(name)
            r = await fn(url, batches)
            print(f"{name:8} {psycopg.__version__ if name == 'psycopg' else asyncpg.__version__:8}"
                  f" write 1000 labels/tx: {r['write_ms']:7.1f} ms   backfill {TOTAL} from 0: {r['read_s']:6.3f} s")
            cluster.drop_database(url)
    finally:
        cluster.stop()


if __name__ == "__main__":
    asyncio.run(main())
