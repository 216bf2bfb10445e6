"""Commands on the key and the label stream: key show, label emit/tail, status."""

from __future__ import annotations

import argparse
import json
import sys

import anyio
import httpx
import libipld
import websockets
from websockets.asyncio.client import connect

from firehose_mod.cli.common import CommandError, _base_url, _out
from firehose_mod.config import Settings
from firehose_mod.daemon import load_key, open_label_log
from firehose_mod.labels.model import Label
from firehose_mod.server.app import SUBSCRIBE, did_document


def key_show(settings: Settings, as_json: bool) -> int:
    key = load_key(settings)
    if as_json:
        doc = did_document(settings.did, key.multibase, settings.public_url or settings.endpoint)
        _out(json.dumps({"did_key": key.did_key, "curve": key.curve, "did_document": doc}, indent=2))
    else:
        _out(key.did_key)
    return 0

async def label_emit(settings: Settings, args: argparse.Namespace) -> int:
    async with open_label_log(settings) as label_log:
        stored = await label_log.emit(args.uri, args.val, cid=args.cid, neg=args.neg, exp=args.exp)
    if stored is None:
        what = "not in force, so there is nothing to negate" if args.neg else "already in force"
        print(f"firehose-mod: {args.val} on {args.uri} is {what}; nothing written", file=sys.stderr)
        return 0
    _out(json.dumps({"seq": stored.seq, "label": stored.label.to_json()}))
    return 0

async def label_seq_floor(settings: Settings, args: argparse.Namespace) -> int:
    async with open_label_log(settings) as label_log:
        try:
            previous = await label_log.raise_seq_floor(args.floor)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
    _out(json.dumps({"previous_head": previous, "next_seq": args.floor + 1}))
    return 0


async def label_tail(settings: Settings, args: argparse.Namespace) -> int:
    base = _base_url(settings, args.url)
    ws_url = base.replace("https://", "wss://", 1).replace("http://", "ws://", 1) + SUBSCRIBE
    if args.cursor is not None:
        ws_url += f"?cursor={args.cursor}"
    try:
        async with connect(ws_url, max_size=5 * 1024 * 1024, compression=None) as ws:
            while True:
                try:
                    if args.no_follow:
                        with anyio.fail_after(2):
                            frame = await ws.recv()
                    else:
                        frame = await ws.recv()
                except TimeoutError:
                    return 0
                if _print_frame(frame):
                    return 1
    except websockets.ConnectionClosed as exc:
        print(f"firehose-mod: stream closed: {exc}", file=sys.stderr)
        return 1
    except (OSError, websockets.InvalidHandshake) as exc:
        raise CommandError(
            f"cannot subscribe to {ws_url}: {exc}. Is `firehose-mod serve` running there? Pass --url for another labeler"
        ) from None

def _print_frame(frame: bytes | str) -> bool:
    """Print one stream frame; True when it was an error frame (the stream ends)."""
    if isinstance(frame, str):
        print(f"firehose-mod: ignoring a text frame (not the event-stream format): {frame[:80]!r}", file=sys.stderr)
        return False
    header, body = libipld.decode_dag_cbor_multi(frame)
    if header.get("op") == -1:
        print(f"firehose-mod: error frame: {body.get('error')}: {body.get('message', '')}", file=sys.stderr)
        return True
    if header.get("t") == "#labels":
        for d in body["labels"]:
            _out(json.dumps({"seq": body["seq"], "label": Label.from_wire(d).to_json()}))
    else:
        print(f"firehose-mod: {header.get('t')}: {json.dumps(body, default=str)}", file=sys.stderr)
    return False

async def status(settings: Settings, args: argparse.Namespace) -> int:
    base = _base_url(settings, args.url)
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.get(base + "/admin/status")
        response.raise_for_status()
        body = response.json()
    except httpx.HTTPError as exc:
        print(f"firehose-mod: the server at {base} did not answer ({exc}). Is `firehose-mod serve` running?", file=sys.stderr)
        if settings.db_path.exists():
            async with open_label_log(settings) as label_log:
                print(f"database {settings.db_path}: head seq {await label_log.head()}", file=sys.stderr)
        return 1
    if args.json:
        _out(json.dumps(body, indent=2))
        return 0
    _out(f"labeler  {body['did']}  (key {body['key']}, firehose-mod {body['version']})")
    _out(f"head     seq {body['head']}")
    subs = body["subscribers"]
    _out(f"subscribers: {len(subs)}")
    if subs:
        _out(f"  {'id':>5} {'remote':<22} {'cursor':>10} {'lag':>8} {'state':<9} {'frames':>8} {'connected':>10}  user-agent")
        for s in subs:
            _out(
                f"  {s['id']:>5} {s['remote']:<22} {s['cursor']:>10} {s['lag']:>8} {s['state']:<9}"
                f" {s['frames_sent']:>8} {s['connected_seconds']:>9}s  {s['user_agent'][:40]}"
            )
    else:
        _out("  nobody is subscribed: consumers (appviews, plyr.fm) must connect to /xrpc/com.atproto.label.subscribeLabels")
    if "ingest" in body:
        ing, queue = body["ingest"], body["queue"]
        if ing["source"]:
            st = ing["stats"]
            _out(f"ingest   {ing['source']} at cursor {ing['cursor']} via {ing['endpoint']}: {st.get('frames', 0)} frames,"
                 f" {st.get('events', 0)} events, {st.get('dead', 0)} rejected, {st.get('reconnects', 0)} reconnects")
        else:
            _out("ingest   off ([ingest] source = none)")
        _out(f"queue    {queue['pending']} pending, {queue['running']} running, {queue['done']} done,"
             f" {queue['failed']} failed; {queue['tracks']} tracks; {queue['dead_letters']} dead letters"
             + ("  (see: firehose-mod ingest dead-letters)" if queue["dead_letters"] else ""))
    return 0
