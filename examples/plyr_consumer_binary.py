"""plyr.fm's label-stream consumer, moved from JSON text frames to the spec's binary stream.

plyr.fm's backend follows its labeler in `backend/src/backend/_internal/label_stream.py`
(github.com/zzstoatzz/plyr.fm): it connects to `{base}/xrpc/com.atproto.label.subscribeLabels`
(`?cursor=N` once it has one), reads each message with `orjson.loads`, skips what is not JSON,
and hands the dict to `_process_message`, which reads `labels[*].uri` (and `val`, `neg` for its
log) and `seq`. Against firehose-mod that works unchanged with the base set to the JSON-text
variant, `MODERATION_LABEL_STREAM_URL=wss://<labeler>/compat/json`.

To read the standard stream instead (firehose-mod's without the prefix, or any atproto
labeler's), the base loses `/compat/json` and the consumer decodes DAG-CBOR frames with
`decode_frame` below, which returns the same dicts the JSON variant carries (`sig` as
`{"$bytes": base64}`; errors as `{"error", "message"}`, which `_process_message` ignores just
as it ignores them in JSON). The diff to label_stream.py:

    -import orjson
    +import libipld
     import websockets
    ...
                     async for raw in ws:
                         if self._shutdown_event.is_set():
                             return
    -                    try:
    -                        message = orjson.loads(raw)
    -                    except (orjson.JSONDecodeError, TypeError):
    -                        continue
    +                    message = decode_frame(raw)
    +                    if message is None:
    +                        continue
                         await self._process_message(message)
                         await self._maybe_flush_cursor()
    ...
    +def decode_frame(raw: bytes | str) -> dict | None:
    +    ...  # as below (with `import base64`)

plus `libipld` in backend/pyproject.toml. The cursor, the rewind by one on reconnect, the
backoff and `_process_message` stay as they are; a close with 1008 after an error frame raises
`ConnectionClosedError` out of `async for` exactly as before, so `run()` logs it and reconnects.

This file verifies nothing beyond the frame's shape: no signatures, no CIDs (the consumer only
invalidates caches, and the labeler is its own service).

Run it (stdlib + websockets + libipld):

    python examples/plyr_consumer_binary.py ws://127.0.0.1:2583 --cursor 0 --count 10

prints each message as one JSON line, as `_process_message` would receive it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import sys
from collections.abc import AsyncIterator

import libipld
import websockets


def decode_frame(raw: bytes | str) -> dict | None:
    """One subscribeLabels message as the dict the JSON consumer handled; None: skip it.

    - `#labels`: `{"seq": N, "labels": [label]}`, each label's `sig` as `{"$bytes": base64}`
      (unpadded, as atproto's JSON and the JSON-text variant write it);
    - an error frame (`op: -1`): `{"error": ..., "message": ...}`, with no seq and no labels;
    - anything else (`#info`, a type this code does not know, text, bytes that are not two
      DAG-CBOR objects): None.
    """
    if not isinstance(raw, bytes):
        return None
    try:
        header, body = libipld.decode_dag_cbor_multi(raw)
    except ValueError:
        return None
    if not isinstance(header, dict) or not isinstance(body, dict):
        return None
    if header.get("op") == -1:
        return body
    if header.get("op") != 1 or header.get("t") != "#labels":
        return None
    for label in body.get("labels") or []:
        if isinstance(label, dict) and isinstance(label.get("sig"), bytes):
            label["sig"] = {"$bytes": base64.b64encode(label["sig"]).decode().rstrip("=")}
    return body


def stream_url(base: str, cursor: int | None = None) -> str:
    url = f"{base}/xrpc/com.atproto.label.subscribeLabels"
    return url if cursor is None else f"{url}?cursor={cursor}"


async def messages(base: str, cursor: int | None = None) -> AsyncIterator[dict]:
    """Every message of one connection, decoded, until the server closes it (a close other than
    1000/1001 raises websockets' ConnectionClosedError, as the JSON consumer saw it)."""
    async with websockets.connect(stream_url(base, cursor), max_size=2**20) as ws:
        async for raw in ws:
            message = decode_frame(raw)
            if message is not None:
                yield message


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", help="the labeler's WebSocket origin, e.g. ws://127.0.0.1:2583")
    parser.add_argument("--cursor", type=int, default=None, help="replay labels after this seq (default: live only)")
    parser.add_argument("--count", type=int, default=None, help="stop after this many label messages")
    args = parser.parse_args(argv)
    seen = 0
    async with contextlib.aclosing(messages(args.base, args.cursor)) as stream:
        async for message in stream:
            print(json.dumps(message), flush=True)
            if "seq" in message:
                seen += 1
                if args.count is not None and seen >= args.count:
                    return 0
            elif "error" in message:
                print(f"error frame: {message['error']}: {message.get('message')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except websockets.ConnectionClosedError as exc:
        print(f"closed: {exc}", file=sys.stderr)
        sys.exit(1)
