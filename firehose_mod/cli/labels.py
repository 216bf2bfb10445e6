"""Commands on the key and the label stream: key show/create, label emit/tail, status."""

from __future__ import annotations

import argparse
import json
import os
import sys
from urllib.parse import urlsplit

import anyio
import httpx
import libipld
import websockets
from websockets.asyncio.client import connect

from firehose_mod.cli.common import CommandError, _base_url, _out
from firehose_mod.config import Settings
from firehose_mod.daemon import open_label_log
from firehose_mod.labels.model import Label
from firehose_mod.labels.signing import SigningKey
from firehose_mod.server.admin import auth_header, token_path
from firehose_mod.server.app import SUBSCRIBE, did_document
from firehose_mod.syntax import check_subject


def key_show(settings: Settings, as_json: bool) -> int:
    """Print the key's did:key; a missing key is an error (a new one would not match the DID document)."""
    path = settings.key_path
    if not path.exists():
        raise CommandError(
            f"no signing key at {path} (data directory {settings.data_dir}): wrong --data-dir or"
            " FIREHOSE_MOD_DATA_DIR? A new labeler's key is created by `firehose-mod key create` or on the"
            " first `firehose-mod run`"
        )
    _print_key(settings, SigningKey.load(path), as_json)
    return 0

def key_create(settings: Settings, as_json: bool) -> int:
    path = settings.key_path
    key, created = SigningKey.load_or_create(path, settings.key_curve)
    if not created:
        raise CommandError(f"a signing key already exists at {path} (see: firehose-mod key show); "
                           "it signs every label: move it away first only if you mean to replace it")
    print(f"firehose-mod: created {path}; publish its did:key as #atproto_label in {settings.did}'s DID document",
          file=sys.stderr)
    _print_key(settings, key, as_json)
    return 0

def _print_key(settings: Settings, key: SigningKey, as_json: bool) -> None:
    if as_json:
        doc = did_document(settings.did, key.multibase, settings.public_url or settings.endpoint)
        _out(json.dumps({"did_key": key.did_key, "curve": key.curve, "did_document": doc}, indent=2))
    else:
        _out(key.did_key)

async def label_emit(settings: Settings, args: argparse.Namespace) -> int:
    check_subject(args.uri)
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
    """Print labels after --cursor, then follow; with --no-follow, stop at the head seen on connecting."""
    base = _base_url(settings, args.url)
    ws_url = base.replace("https://", "wss://", 1).replace("http://", "ws://", 1) + SUBSCRIBE
    if args.cursor is not None:
        ws_url += f"?cursor={args.cursor}"
    # Our own token goes to our own labeler only, never to another --url.
    head = await _head(base, {} if args.url else auth_header(settings.data_dir)) if args.no_follow else None
    if args.no_follow and head is None:
        print(f"firehose-mod: {base} does not tell its head seq (/admin/status is for this machine's labeler);"
              " stopping after 2 s without a label", file=sys.stderr)
    try:
        async with connect(ws_url, max_size=5 * 1024 * 1024, compression=None) as ws:
            if args.no_follow and (args.cursor is None or args.cursor == head):
                return 0  # nothing to replay; a cursor past the head gets its FutureCursor below
            while True:
                # Without a head, 2 s of quiet ends the replay. With one, the quiet only matters when the
                # head is a seq floor (`label seq-floor`) that no label carries.
                quiet = None if not args.no_follow else 2 if head is None else 10
                try:
                    with anyio.fail_after(quiet):
                        frame = await ws.recv()
                except TimeoutError:
                    return 0
                seq, failed = _print_frame(frame)
                if failed:
                    return 1
                if head is not None and seq is not None and seq >= head:
                    return 0
    except websockets.ConnectionClosed as exc:
        print(f"firehose-mod: stream closed: {exc}", file=sys.stderr)
        return 1
    except (OSError, websockets.InvalidHandshake) as exc:
        raise CommandError(
            f"cannot subscribe to {ws_url}: {exc}. Is `firehose-mod serve` running there? Pass --url for another labeler"
        ) from None

async def _head(base: str, headers: dict[str, str]) -> int | None:
    """The labeler's head seq from /admin/status (this machine's labeler), or None."""
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.get(base + "/admin/status", headers=headers)
        response.raise_for_status()
        return int(response.json()["head"])
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None

def _print_frame(frame: bytes | str) -> tuple[int | None, bool]:
    """Print one stream frame: (its seq if it carried labels, True if it was an error frame)."""
    if isinstance(frame, str):
        print(f"firehose-mod: ignoring a text frame (not the event-stream format): {frame[:80]!r}", file=sys.stderr)
        return None, False
    header, body = libipld.decode_dag_cbor_multi(frame)
    if header.get("op") == -1:
        print(f"firehose-mod: error frame: {body.get('error')}: {body.get('message', '')}", file=sys.stderr)
        return None, True
    if header.get("t") == "#labels":
        for d in body["labels"]:
            _out(json.dumps({"seq": body["seq"], "label": Label.from_wire(d).to_json()}))
        return body["seq"], False
    print(f"firehose-mod: {header.get('t')}: {json.dumps(body, default=str)}", file=sys.stderr)
    return None, False

def status_headers(settings: Settings, url: str | None, env: dict | None = None) -> dict[str, str]:
    """Who `status` says it is: `FIREHOSE_MOD_OPERATOR_TOKEN` (a named operator's token) when set;
    else this data directory's admin.token, but only to this labeler (loopback or its own
    endpoint/public URL): a token is never sent to whatever `--url` names."""
    token = (os.environ if env is None else env).get("FIREHOSE_MOD_OPERATOR_TOKEN", "").strip()
    if token:
        return {"Authorization": f"Bearer {token}"}
    if url is None:
        return auth_header(settings.data_dir)
    own = {u.rstrip("/") for u in (settings.public_url, settings.endpoint) if u}
    host = urlsplit(url).hostname or ""
    if url.rstrip("/") in own or host in ("127.0.0.1", "::1", "localhost"):
        return auth_header(settings.data_dir)
    return {}


async def status(settings: Settings, args: argparse.Namespace) -> int:
    base = _base_url(settings, args.url)
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.get(base + "/admin/status", headers=status_headers(settings, args.url))
        if response.status_code == 401:
            raise CommandError(f"the server at {base} wants an operator token: on its machine, the admin.token of"
                               f" its data directory ({token_path(settings.data_dir)} here: pass that server's"
                               " --data-dir or run as the user that can read it); from elsewhere, set"
                               " FIREHOSE_MOD_OPERATOR_TOKEN to an admin's or moderator's token")
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
