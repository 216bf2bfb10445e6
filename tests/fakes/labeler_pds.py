"""The labeler account's world over real HTTP on 127.0.0.1:0: its DID document in a PLC directory
(`/plc/{did}` and `/plc/{did}/data`), and its PDS at the root (describeServer, createSession,
getRecord, putRecord), as `firehose-mod declare` meets them.

    pds = FakeLabelerPDS(DID, password="app-pass-word", label_key=key.did_key)
    with pds:
        pds.labeler_endpoint = "https://labeler.example"   # the document's #atproto_labeler
        env = {..., "FIREHOSE_MOD_PLC_URL": pds.plc_url, "FIREHOSE_MOD_MEDIA_ALLOW_NETWORKS": "127.0.0.1/32"}

The DID document is built from the knobs on each request: `label_key` (None = no
#atproto_label), `labeler_endpoint` (None = no #atproto_labeler), `labeler_type`. putRecord
follows the reference PDS (packages/pds putRecord.ts and the repo transactor): auth by the
session's bearer token; `swapRecord` given (a string or null) must match the current record's cid
(null: no record) or the answer is 400 InvalidSwap; the record's cid is the CIDv1 (dag-cbor,
sha2-256) of its DAG-CBOR; an unchanged record is a no-op that keeps its cid. `records` holds
(value, cid) by (collection, rkey); `writes` every accepted putRecord body; `calls` every request;
`on_session` runs after each successful createSession (to change the repo between read and write).

createRecord (the transparency poster's posts) follows the reference PDS too: bearer auth, `$type`
matching the collection, the given `rkey` or a new TID; a key that already holds a record is the
repo's MST refusing a second value (`There is already a value at key`), which the reference PDS
does not catch: 500 InternalServerError. `created` holds every accepted createRecord body. Knobs:
`fail_creates = N` answers the next N createRecord calls 503 without writing; `lose_create_answers
= N` writes the next N records and then answers 502, as if the answer were lost on the way back.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qsl, unquote, urlsplit

import libipld

from tests.fakes.http import LocalHTTPServer

PDS_SIGNING_KEY = "did:key:zQ3shXjHeiBuRCKmM36cuYnm7YEMzhGnCmCyW92sRJ9pribSF"
ROTATION_KEY = "did:key:zQ3shhCGUqDKjStzuDxPkTxN6ujddP4RkEKJJouJGRRkaLGbg"


def record_cid(value: dict) -> str:
    """The CID a PDS gives a record: CIDv1, dag-cbor, sha2-256 of its DAG-CBOR."""
    digest = hashlib.sha256(libipld.encode_dag_cbor(value)).digest()
    return libipld.encode_multibase("b", b"\x01\x71\x12\x20" + digest)


def _jwt(claims: dict) -> str:
    part = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()
    return f"{part({'typ': 'at+jwt', 'alg': 'ES256K'})}.{part(claims)}.c2lnbmF0dXJl"


class FakeLabelerPDS(LocalHTTPServer):
    def __init__(self, did: str, *, handle: str = "labeler.test", password: str = "app-pass-word",
                 label_key: str | None = None, labeler_endpoint: str | None = None):
        self.did = did
        self.account_handle = handle
        self.password = password
        self.label_key = label_key
        self.labeler_endpoint = labeler_endpoint
        self.labeler_type = "AtprotoLabeler"
        self.serve_plc_data = True
        self.on_session = None  # called after each successful createSession (e.g. someone else writes)
        self.records: dict[tuple[str, str], tuple[dict, str]] = {}
        self.writes: list[dict] = []
        self.created: list[dict] = []  # accepted createRecord bodies
        self.fail_creates = 0
        self.lose_create_answers = 0
        self.calls: list[dict] = []
        self.access = _jwt({"scope": "com.atproto.appPass", "sub": did, "exp": int(time.time()) + 3600})
        self._lock = threading.Lock()

    # -- addresses and the document ------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def plc_url(self) -> str:
        return f"{self.url}/plc"

    def plc_data(self) -> dict:
        """What the PLC directory's `/{did}/data` answers: the current operation's fields."""
        methods = {"atproto": PDS_SIGNING_KEY}
        services = {"atproto_pds": {"type": "AtprotoPersonalDataServer", "endpoint": self.url}}
        if self.label_key is not None:
            methods["atproto_label"] = self.label_key
        if self.labeler_endpoint is not None:
            services["atproto_labeler"] = {"type": self.labeler_type, "endpoint": self.labeler_endpoint}
        return {"did": self.did, "verificationMethods": methods, "rotationKeys": [ROTATION_KEY],
                "alsoKnownAs": [f"at://{self.account_handle}"], "services": services}

    def document(self) -> dict:
        """The DID document, rendered from the data as plc.directory renders it."""
        data = self.plc_data()
        return {
            "@context": ["https://www.w3.org/ns/did/v1", "https://w3id.org/security/multikey/v1",
                         "https://w3id.org/security/suites/secp256k1-2019/v1"],
            "id": self.did,
            "alsoKnownAs": data["alsoKnownAs"],
            "verificationMethod": [{"id": f"{self.did}#{name}", "type": "Multikey", "controller": self.did,
                                    "publicKeyMultibase": key.removeprefix("did:key:")}
                                   for name, key in data["verificationMethods"].items()],
            "service": [{"id": f"#{name}", "type": s["type"], "serviceEndpoint": s["endpoint"]}
                        for name, s in data["services"].items()],
        }

    def publish(self, value: dict, collection: str = "app.bsky.labeler.service", rkey: str = "self") -> str:
        """Put a record in the repo directly (as another tool would have); returns its cid."""
        cid = record_cid(value)
        with self._lock:
            self.records[(collection, rkey)] = (json.loads(json.dumps(value)), cid)
        return cid

    def count(self, nsid: str) -> int:
        with self._lock:
            return sum(1 for c in self.calls if c["path"].endswith(nsid))

    # -- serving -------------------------------------------------------------------------------
    def handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        url = urlsplit(h.path)
        raw = h.rfile.read(int(h.headers.get("content-length", 0) or 0))
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            data = None
        query = dict(parse_qsl(url.query))
        with self._lock:
            self.calls.append({"method": method, "path": url.path, "query": query, "json": data,
                               "authorization": h.headers.get("authorization")})
        status, body = self._route(method, unquote(url.path), query, data, h.headers.get("authorization"))
        out = json.dumps(body).encode()
        h.send_response(status)
        h.send_header("content-type", "application/json")
        h.send_header("content-length", str(len(out)))
        h.end_headers()
        h.wfile.write(out)

    def _route(self, method: str, path: str, query: dict, data, auth: str | None) -> tuple[int, dict]:
        parts = path.strip("/").split("/")
        if parts[0] == "plc" and len(parts) >= 2:
            if parts[1] != self.did:
                return 404, {"message": f"DID not registered: {parts[1]}"}
            if len(parts) == 2:
                return 200, self.document()
            if parts[2:] == ["data"] and self.serve_plc_data:
                return 200, self.plc_data()
            return 404, {"message": "not found"}
        nsid = path.removeprefix("/xrpc/")
        if nsid == "com.atproto.server.describeServer":
            return 200, {"did": "did:web:pds.test", "availableUserDomains": [".test"], "inviteCodeRequired": False}
        if nsid == "com.atproto.server.createSession" and method == "POST":
            return self._create_session(data)
        if nsid == "com.atproto.repo.getRecord":
            return self._get_record(query)
        if nsid == "com.atproto.repo.putRecord" and method == "POST":
            if auth != f"Bearer {self.access}":
                return 401, {"error": "AuthenticationRequired", "message": "Authentication Required"}
            return self._put_record(data)
        if nsid == "com.atproto.repo.createRecord" and method == "POST":
            if auth != f"Bearer {self.access}":
                return 401, {"error": "AuthenticationRequired", "message": "Authentication Required"}
            return self._create_record(data)
        return 501, {"error": "MethodNotImplemented", "message": f"Method Not Implemented: {nsid}"}

    def _create_session(self, data) -> tuple[int, dict]:
        if not isinstance(data, dict) or data.get("identifier") not in (self.did, self.account_handle) \
                or data.get("password") != self.password:
            return 401, {"error": "AuthenticationRequired", "message": "Invalid identifier or password"}
        if self.on_session is not None:
            self.on_session()
        return 200, {"accessJwt": self.access,
                     "refreshJwt": _jwt({"sub": self.did, "exp": int(time.time()) + 86400}),
                     "handle": self.account_handle, "did": self.did, "active": True}

    def _get_record(self, query: dict) -> tuple[int, dict]:
        if query.get("repo") not in (self.did, self.account_handle):
            return 400, {"error": "RepoNotFound", "message": f"Could not find repo: {query.get('repo')}"}
        uri = f"at://{self.did}/{query.get('collection')}/{query.get('rkey')}"
        with self._lock:
            found = self.records.get((query.get("collection"), query.get("rkey")))
        if found is None:
            return 400, {"error": "RecordNotFound", "message": f"Could not locate record: {uri}"}
        return 200, {"uri": uri, "cid": found[1], "value": found[0]}

    def _put_record(self, data) -> tuple[int, dict]:
        if not isinstance(data, dict) or not {"repo", "collection", "rkey", "record"} <= set(data):
            return 400, {"error": "InvalidRequest", "message": "Input must have the properties repo, collection,"
                                                              " rkey, record"}
        if data["repo"] != self.did:
            return 403, {"error": "InvalidRequest", "message": "Invalid repo"}
        record, key = data["record"], (data["collection"], data["rkey"])
        if not isinstance(record, dict) or record.get("$type") != data["collection"]:
            return 400, {"error": "InvalidRequest", "message": "Invalid $type: must match collection"}
        with self._lock:
            current = self.records.get(key)
            if "swapRecord" in data:
                swap = data["swapRecord"]
                if (current is None and swap is not None) or (current is not None and swap != current[1]):
                    return 400, {"error": "InvalidSwap",
                                 "message": f"Record was at {current[1] if current else 'null'}"}
            cid = record_cid(record)
            self.records[key] = (record, cid)
            self.writes.append(data)
        return 200, {"uri": f"at://{self.did}/{key[0]}/{key[1]}", "cid": cid,
                     "commit": {"cid": record_cid({"commit": cid}), "rev": "3lbcdefghijk2"},
                     "validationStatus": "valid"}

    def _create_record(self, data) -> tuple[int, dict]:
        if not isinstance(data, dict) or not {"repo", "collection", "record"} <= set(data):
            return 400, {"error": "InvalidRequest", "message": "Input must have the properties repo, collection,"
                                                              " record"}
        if data["repo"] != self.did:
            return 403, {"error": "InvalidRequest", "message": "Invalid repo"}
        record = data["record"]
        if not isinstance(record, dict) or record.get("$type") != data["collection"]:
            return 400, {"error": "InvalidRequest", "message": "Invalid $type: must match collection"}
        with self._lock:
            if self.fail_creates > 0:
                self.fail_creates -= 1
                return 503, {"error": "ServiceUnavailable", "message": "try again later"}
            rkey = data.get("rkey") or _new_tid()
            key = (data["collection"], rkey)
            if key in self.records:
                return 500, {"error": "InternalServerError", "message": "Internal Server Error"}
            cid = record_cid(record)
            self.records[key] = (record, cid)
            self.created.append(data)
            if self.lose_create_answers > 0:
                self.lose_create_answers -= 1
                return 502, {"error": "BadGateway", "message": "the answer was lost"}
        return 200, {"uri": f"at://{self.did}/{key[0]}/{key[1]}", "cid": cid,
                     "commit": {"cid": record_cid({"commit": cid}), "rev": "3lbcdefghijk3"},
                     "validationStatus": "valid"}


def _new_tid() -> str:
    """A TID for a record created without an rkey (microseconds and a clock id, base32-sortable)."""
    n = (int(time.time() * 1_000_000) << 10) | 7
    return "".join("234567abcdefghijklmnopqrstuvwxyz"[(n >> (5 * i)) & 31] for i in range(12, -1, -1))
