"""`firehose-mod declare`: the labeler's public declaration, compared with what is published.

It reads our DID document (PLC directory or did:web, through the vetted client), the published
`app.bsky.labeler.service/self` record from the account's PDS (`getRecord`, no auth), builds the
record from the declaration (`labels/declaration.py`), checks it against the lexicon, and
prints the record, the diff and what the DID document lacks, with the exact fix. `--apply` logs in
with the account's app password through the atproto SDK and writes the record with
`putRecord`, swapping the published cid (`swapRecord`; null when none was published, so a
record someone wrote meanwhile is never overwritten). Exit 0: in sync; 1: a diff (without
--apply) or a DID-document problem; 2: errors.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime

import httpx

from firehose_mod.cli.common import CommandError, _out
from firehose_mod.config import Settings
from firehose_mod.ingest.resolve import DidResolver, ResolveError, pds_from_document
from firehose_mod.labels import declaration as dc
from firehose_mod.labels.account import AccountError, labeler_client
from firehose_mod.labels.account import sdk_error as _sdk_error
from firehose_mod.labels.model import format_datetime
from firehose_mod.labels.signing import SigningKey
from firehose_mod.scan.netguard import UnsafeAddress, outbound_client

GET_RECORD = "com.atproto.repo.getRecord"
PUT_RECORD = "com.atproto.repo.putRecord"


def add_parser(sub) -> None:
    p = sub.add_parser("declare", help="the labeler's app.bsky.labeler.service record and DID document: show what"
                                      " differs from what is published; --apply publishes the record")
    p.add_argument("--apply", action="store_true",
                   help="write the declared record to the labeler account's repo (app password needed)")
    p.add_argument("--json", action="store_true", help="one JSON object: record, diff, problems, what was written")


async def declare(settings: Settings, args: argparse.Namespace) -> int:
    try:
        decl = dc.load_declaration(settings.labeler_declaration_file)
    except dc.DeclarationError as exc:
        raise CommandError(str(exc)) from None
    key = _key(settings)
    did = settings.did
    async with outbound_client(settings) as client:
        doc = await _document(client, settings, did)
        try:
            pds = pds_from_document(did, doc)
        except ResolveError as exc:
            raise CommandError(f"{exc}: the declaration is a record in the labeler account's repo, so the account"
                               " needs a PDS (a did:web labeler's did.json must name its #atproto_pds and #atproto key"
                               " too; firehose-mod's own /.well-known/did.json names neither)") from None
        published, published_cid = await _published(client, pds, did)
        problems = dc.check_did_document(doc, did, key.did_key, settings.public_url)
        fix = None
        if any(p.code != "public-url-unset" for p in problems):
            plc_data = await _plc_data(client, settings, did) if did.startswith("did:plc:") else None
            fix = dc.document_fix(doc, did, key.did_key, settings.public_url, plc_data)
    created = published.get("createdAt") if isinstance(published, dict) else None
    record = dc.build_record(decl, created if isinstance(created, str) else format_datetime(datetime.now(UTC)),
                             keep=published if isinstance(published, dict) else None)
    invalid = dc.record_problems(record) + dc.sdk_problems(record)
    if invalid:
        raise CommandError(f"the declared record breaks the app.bsky.labeler.service lexicon: {invalid[0]}"
                           f" ({len(invalid)} problem(s)); fix {decl.source} and run again")
    diff = dc.diff_records(published, record)
    for value in _undeclared_policy_values(settings, decl):
        print(f"firehose-mod: the policy can emit {value!r}, which the declaration does not list: add it to"
              f" {'[labeler] declaration_file' if decl.source == 'default' else decl.source}", file=sys.stderr)
    written = None
    if args.apply and diff:
        written = await _publish(settings, pds, record, published_cid)
    uri = f"at://{did}/{dc.COLLECTION}/{dc.RKEY}"
    in_sync = not diff or written is not None
    if args.json:
        _out(json.dumps({"did": did, "pds": pds, "uri": uri, "published_cid": published_cid, "published": published,
                         "record": record, "diff": diff, "in_sync": in_sync, "written": written,
                         "did_document": {"ok": not problems, "problems": [p.to_json() for p in problems],
                                          "fix": fix}}, indent=2))
    else:
        _render(did, pds, uri, published_cid, record, diff, written, problems, fix, args.apply)
    return 0 if in_sync and not problems else 1


def _key(settings: Settings) -> SigningKey:
    if not settings.key_path.exists():
        raise CommandError(f"no signing key at {settings.key_path}: the DID document's #atproto_label must be this"
                           " labeler's key; wrong --data-dir or FIREHOSE_MOD_DATA_DIR? (a new labeler: firehose-mod"
                           " key create)")
    return SigningKey.load(settings.key_path)


async def _document(client: httpx.AsyncClient, settings: Settings, did: str) -> object:
    """Our DID document, as clients resolve it."""
    resolver = DidResolver(client, settings.plc_url)
    try:
        return await resolver._document(did)  # the resolver's own fetch: its URL rules, limits and errors
    except ResolveError as exc:
        hint = (" (did:web:localhost is the local default: set [labeler] did to the labeler account's DID)"
                if did == "did:web:localhost" else "")
        raise CommandError(f"cannot read our DID document: {exc}{hint}") from None


async def _plc_data(client: httpx.AsyncClient, settings: Settings, did: str) -> dict | None:
    """The PLC directory's current data for `did` (what an operation changes), or None."""
    try:
        resp = await client.get(f"{settings.plc_url.rstrip('/')}/{did}/data")
        return resp.json() if resp.status_code == 200 and len(resp.content) < 256 * 1024 else None
    except (httpx.HTTPError, UnsafeAddress, ValueError):
        return None  # the fix is then read back from the DID document


async def _published(client: httpx.AsyncClient, pds: str, did: str) -> tuple[dict | None, str | None]:
    """(record, cid) of app.bsky.labeler.service/self in `did`'s repo, or (None, None)."""
    url = f"{pds}/xrpc/{GET_RECORD}"
    try:
        resp = await client.get(url, params={"repo": did, "collection": dc.COLLECTION, "rkey": dc.RKEY})
    except UnsafeAddress as exc:
        raise CommandError(f"the PDS {pds} named by {did}'s DID document is not an address firehose-mod contacts"
                           f" ({exc}); fix the document's #atproto_pds, or list its network in [media]"
                           " allow_networks") from None
    except httpx.HTTPError as exc:
        raise CommandError(f"cannot reach the PDS {pds} ({type(exc).__name__}: {exc}); is it up? Run again"
                           " later") from None
    body = _json(resp)
    if resp.status_code == 200 and isinstance(body.get("value"), dict) and isinstance(body.get("cid"), str):
        return body["value"], body["cid"]
    if resp.status_code == 404 or (resp.status_code == 400 and body.get("error") == "RecordNotFound"):
        return None, None
    raise CommandError(f"the PDS {pds} answered {GET_RECORD} with HTTP {resp.status_code}"
                       f" {_error_text(body) or resp.text[:200]!r}; is {did}'s repo hosted there?")


def _json(resp: httpx.Response) -> dict:
    try:
        body = resp.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _error_text(body: dict) -> str:
    return ": ".join(str(body[k])[:200] for k in ("error", "message") if body.get(k))


async def _publish(settings: Settings, pds: str, record: dict, published_cid: str | None) -> dict:
    """Log in with the app password through the atproto SDK (`labels/account.py`) and write `record`
    exactly, swapping the published cid; returns {uri, cid}."""
    from atproto_client import models
    from atproto_client.exceptions import AtProtocolError, RequestErrorBase
    from atproto_client.models.utils import get_response_model

    try:
        async with labeler_client(settings, pds) as client:
            body = {"repo": settings.did, "collection": dc.COLLECTION, "rkey": dc.RKEY, "record": record,
                    "swapRecord": published_cid}  # null: only if no record exists (the lexicon's nullable swap)
            try:
                # The record as built, byte for byte: the SDK's typed model would add `$type` to nested objects.
                response = await client.invoke_procedure(PUT_RECORD, content=json.dumps(body).encode(),
                                                         input_encoding="application/json",
                                                         output_encoding="application/json")
                result = get_response_model(response, models.ComAtprotoRepoPutRecord.Response)
            except RequestErrorBase as exc:
                if "InvalidSwap" in _sdk_error(exc):
                    raise CommandError("the published record changed while declare ran (InvalidSwap); nothing was"
                                       " written: run `firehose-mod declare` again to see the new difference") from None
                raise CommandError(f"the PDS {pds} refused the record ({_sdk_error(exc)}); nothing was written") from None
            except (AtProtocolError, UnsafeAddress) as exc:
                raise CommandError(f"writing the record to {pds} failed: {_sdk_error(exc)}") from None
            return {"uri": result.uri, "cid": result.cid}
    except AccountError as exc:
        raise CommandError(str(exc)) from None


def _undeclared_policy_values(settings: Settings, decl: dc.Declaration) -> list[str]:
    """Label values the policy's rules name that the declaration does not list."""
    from firehose_mod.scan.policy import PolicyError, load_policy

    try:
        policy = load_policy(settings.policy_file)
    except PolicyError:
        return []  # `scan` and `run` report a bad policy; it does not change the declaration
    declared = set(decl.label_values)
    return sorted({r.value for r in policy.rules if r.value and r.action != "ignore"} - declared)


def _render(did, pds, uri, published_cid, record, diff, written, problems, fix, applied) -> None:
    _out(f"labeler  {did}  (PDS {pds})")
    _out(f"record   {uri}  " + (f"published cid {published_cid}" if published_cid else "not published yet"))
    _out("declared record:")
    _out(dc.canonical(record))
    if not diff:
        _out("the published record is the declared one: in sync")
    else:
        _out("difference (published -> declared):")
        for line in diff:
            _out(line)
        if written:
            _out(f"published: {written['uri']} cid {written['cid']}")
        elif not applied:
            _out("run `firehose-mod declare --apply` to publish the declared record")
    if not problems:
        _out("DID document: #atproto_label is this labeler's key and #atproto_labeler points at our public URL")
        return
    _out(f"DID document: {len(problems)} problem(s):")
    for p in problems:
        _out(f"  - {p.message}")
        _out(f"    fix: {p.fix}")
    if fix:
        _out("how (as it stands, to copy and paste):")
        _out(fix)
