"""plyr.fm's current labeler (zzstoatzz/plyr.fm `services/moderation/`, b156152f) as an importer meets
it, over real HTTP and WebSocket on 127.0.0.1:0 (aiohttp, in the test's event loop):

- `queryLabels` (src/xrpc.rs `query_labels`, src/db.rs `query_labels`): `uriPatterns` is required
  and one comma-separated string; a pattern containing `*` becomes SQL `uri LIKE` with every `*`
  turned into `%` (so `%` and `_` already in it are wildcards too; LIKE is case-sensitive in
  Postgres), others are `uri =`; `sources` comma-separated; `limit` clamped to 1..250; `cursor` is
  `seq > cursor` (unparseable: 0). It answers EVERY historical row of the `labels` table in seq
  order, not the current state; it fetches limit+1 rows and gives `cursor` (the last row's seq)
  only when there are more, else `"cursor": null`. Each label is `LabelRow::to_label`: `ver: 1`,
  `neg` only when true, `cts`/`exp` re-rendered from TIMESTAMPTZ as `%Y-%m-%dT%H:%M:%S%.3fZ`, and
  `sig` as a JSON array of byte values (serde_bytes through serde_json), not `{"$bytes": ...}`.
- `subscribeLabels` (src/xrpc.rs `handle_subscribe`): JSON text messages `{"seq": N, "labels":
  [label]}`, no header; with a cursor, at most 1000 stored rows after it (`get_labels_since(c,
  1000)`), then only live labels; without one, live only. No error frames, no FutureCursor.
- Labels are signed as `Label::sign` does: DAG-CBOR of the label without `sig` (serde_ipld_dagcbor
  sorts the keys), secp256k1, low-S; writes never check the current state (a negation of nothing
  and a repeat of a label in force are both stored rows), and `seq` is a BIGSERIAL (gaps happen).

`docs` serves DID documents at `/plc/{did}` (a PLC directory) with each DID's `#atproto_label` key.
Knobs: `fail_after_pages` (queryLabels answers 500 once that many pages were served), `page_delay`,
`backlog` (rows per subscribe connection).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from aiohttp import WSMsgType, web

from firehose_mod.labels.model import Label
from firehose_mod.labels.signing import SigningKey


def pg_timestamp(dt: datetime) -> str:
    """chrono's `%Y-%m-%dT%H:%M:%S%.3fZ`."""
    dt = dt.astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def like(pattern: str, text: str) -> bool:
    """Postgres `text LIKE pattern` (default escape `\\`; case-sensitive)."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if c == "%" else "." if c == "_" else re.escape(c))
        i += 1
    return re.fullmatch("".join(out), text, flags=re.DOTALL) is not None


@dataclass
class Row:
    seq: int
    src: str
    uri: str
    cid: str | None
    val: str
    neg: bool
    cts: datetime
    exp: datetime | None
    sig: bytes

    def label_json(self) -> dict:
        out: dict = {"ver": 1, "src": self.src, "uri": self.uri}
        if self.cid is not None:
            out["cid"] = self.cid
        out["val"] = self.val
        if self.neg:
            out["neg"] = True
        out["cts"] = pg_timestamp(self.cts)
        if self.exp is not None:
            out["exp"] = pg_timestamp(self.exp)
        out["sig"] = list(self.sig)
        return out

    def label(self) -> Label:
        return Label(src=self.src, uri=self.uri, val=self.val, cts=pg_timestamp(self.cts), cid=self.cid,
                     neg=self.neg, exp=pg_timestamp(self.exp) if self.exp else None, sig=self.sig)


class FakePlyrLabeler:
    def __init__(self, did: str, key: SigningKey, *, backlog: int = 1000):
        self.did = did
        self.key = key
        self.keys: dict[str, SigningKey] = {did: key}
        self.docs: dict[str, str] = {did: key.did_key}  # DID -> #atproto_label did:key served at /plc/{did}
        self.rows: list[Row] = []
        self.seq = 0
        self.backlog = backlog
        self.fail_after_pages: int | None = None
        self.page_delay = 0.0
        self.pages_served = 0
        self.query_params: list[dict[str, str]] = []  # every queryLabels request's parameters
        self.subscribe_cursors: list[str | None] = []
        self.clock = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- the labels table ------------------------------------------------------------------
    def emit(self, uri: str, val: str, *, neg: bool = False, cid: str | None = None, src: str | None = None,
             cts: datetime | None = None, exp: datetime | None = None, seq_gap: int = 0) -> Row:
        """`Label::new` + `sign` + `store_label`: cts defaults to a clock one second later each time."""
        if cts is None:
            self.clock += timedelta(seconds=1)
            cts = self.clock
        src = src or self.did
        unsigned = Label(src=src, uri=uri, val=val, cts=pg_timestamp(cts), cid=cid, neg=neg,
                         exp=pg_timestamp(exp) if exp else None)
        sig = self.keys[src].sign(unsigned).sig
        self.seq += 1 + seq_gap
        row = Row(self.seq, src, uri, cid, val, neg, cts, exp, sig)
        self.rows.append(row)
        return row

    # -- HTTP --------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def plc_url(self) -> str:
        return f"{self.url}/plc"

    async def start(self) -> FakePlyrLabeler:
        app = web.Application()
        app.router.add_get("/xrpc/com.atproto.label.queryLabels", self._query)
        app.router.add_get("/xrpc/com.atproto.label.subscribeLabels", self._subscribe)
        app.router.add_get("/plc/{did}", self._plc)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> FakePlyrLabeler:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def _plc(self, request: web.Request) -> web.Response:
        did = request.match_info["did"]
        if did not in self.docs:
            return web.json_response({"message": f"DID not registered: {did}"}, status=404)
        return web.json_response({
            "@context": ["https://www.w3.org/ns/did/v1"], "id": did,
            "verificationMethod": [{"id": f"{did}#atproto_label", "type": "Multikey", "controller": did,
                                    "publicKeyMultibase": self.docs[did].removeprefix("did:key:")}],
            "service": [{"id": "#atproto_labeler", "type": "AtprotoLabeler", "serviceEndpoint": self.url}],
        })

    async def _query(self, request: web.Request) -> web.Response:
        q = request.query
        self.query_params.append(dict(q))
        if self.page_delay:
            await asyncio.sleep(self.page_delay)
        if self.fail_after_pages is not None and self.pages_served >= self.fail_after_pages:
            return web.Response(status=500, text="error returned from database: connection reset")
        if "uriPatterns" not in q:  # axum's Query extractor
            return web.Response(status=400, text="Failed to deserialize query string: missing field `uriPatterns`")
        patterns = [p.strip() for p in q["uriPatterns"].split(",")]
        sources = [s.strip() for s in q["sources"].split(",")] if "sources" in q else None
        try:
            limit = max(1, min(250, int(q.get("limit", "50"))))
        except ValueError:
            return web.Response(status=400, text="Failed to deserialize query string: invalid digit")
        cursor = q.get("cursor")
        try:
            after = int(cursor) if cursor is not None else None
        except ValueError:
            after = 0  # `c.parse().unwrap_or(0)`

        def matches(r: Row) -> bool:
            if not any(like(p.replace("*", "%"), r.uri) if "*" in p else r.uri == p for p in patterns):
                return False
            if sources and r.src not in sources:
                return False
            return after is None or r.seq > after

        rows = [r for r in sorted(self.rows, key=lambda r: r.seq) if matches(r)][: limit + 1]
        nxt = None
        if len(rows) > limit:
            rows.pop()
            nxt = str(rows[-1].seq)
        self.pages_served += 1
        return web.json_response({"cursor": nxt, "labels": [r.label_json() for r in rows]})

    async def _subscribe(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        cursor = request.query.get("cursor")
        self.subscribe_cursors.append(cursor)
        if cursor is not None:
            c = int(cursor)
            backlog = [r for r in sorted(self.rows, key=lambda r: r.seq) if r.seq > c][: self.backlog]
            for r in backlog:
                await ws.send_json({"seq": r.seq, "labels": [r.label_json()]})
        # then live only (nothing is emitted while an import reads): wait for the client to leave
        async for msg in ws:
            if msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                break
        return ws
