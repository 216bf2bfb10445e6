"""A local atproto network over real HTTP on 127.0.0.1:0: a PLC directory, did:web hosts, a relay's
`listReposByCollection` (or, as a bare PDS, `listRepos` only) and PDSes' `listRecords`, all served
by one threaded stdlib server.

    net = FakeNetwork(page_size=3)
    net.add_pds("one")
    net.add_repo(DID, "one", make_records(DID, 5))
    with net:                      # serving at net.base
        resolver = DidResolver(client, net.plc_url, web_base=net.web_base)
        ... run_backfill(settings, relay_url=net.relay_url, resolver=resolver, client=client)

Routes: /plc/{did} (DID documents; their #atproto_pds points at /pds/{name}),
/web/{host}/.well-known/did.json, /relay/xrpc/com.atproto.sync.listReposByCollection,
/pds/{name}/xrpc/com.atproto.repo.listRecords. Paging follows the reference PDS: records in
descending rkey order, `cursor` = the last rkey of every non-empty page (so the last page
is followed by one empty page). Knobs: `FakePds.fail_times` (HTTP 500 that many times, then
recover), `FakePds.down` (documents point at a closed port: connection refused),
`add_repo(..., pds=None)` (a DID document without a PDS service), `add_repo(..., endpoint=URL)` (a
document whose #atproto_pds names any URL, e.g. an internal address). Every request is logged
in `requests` as (path, query) for tests to count.
"""

from __future__ import annotations

import json
import random
import socket
import string
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qsl, unquote, urlsplit

from tests.fakes.http import LocalHTTPServer
from tests.fakes.jetstream import tid, track_record

LIST_RECORDS = "com.atproto.repo.listRecords"
LIST_REPOS = "com.atproto.sync.listReposByCollection"


def fake_cid(seed: str) -> str:
    return "bafyrei" + "".join(random.Random(seed).choices(string.ascii_lowercase + "234567", k=52))


def record_item(did: str, n: int, value: dict | None = None, *, repo_did: str | None = None) -> dict:
    """A listRecords item {uri, cid, value}; `repo_did` puts another DID in the URI (a mismatch)."""
    rkey = tid(n)
    value = value if value is not None else track_record(f"Track {n} of {did[-6:]}", artist=f"Artist {did[-6:]}")
    return {"uri": f"at://{repo_did or did}/fm.plyr.track/{rkey}", "cid": fake_cid(f"{did}/{rkey}/{value}"),
            "value": value}


def make_records(did: str, count: int, start: int = 0) -> list[dict]:
    return [record_item(did, start + i) for i in range(count)]


def closed_port() -> int:
    """A port nothing listens on (bound, then released): connecting to it is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class FakePds:
    name: str
    repos: dict[str, list[dict]] = field(default_factory=dict)  # did -> listRecords items
    fail_times: int = 0  # answer HTTP 500 to this many listRecords calls, then recover
    down: bool = False  # DID documents point at a closed port


@dataclass
class _Account:
    did: str
    pds: str | None  # FakePds name; None = a document without an #atproto_pds service
    endpoint: str | None = None  # names this #atproto_pds endpoint instead of a FakePds


class FakeNetwork(LocalHTTPServer):
    """PLC directory, did:web hosts, relay and PDSes on one real HTTP server."""

    def __init__(self, *, page_size: int = 100, relay_page_size: int = 1000):
        self.page_size = page_size  # listRecords answers at most this many (whatever limit says)
        self.relay_page_size = relay_page_size
        self.pdses: dict[str, FakePds] = {}
        self.accounts: dict[str, _Account] = {}
        self.relay: list[str] = []  # DIDs the relay lists (may include junk)
        self.relay_fail_times = 0
        self.by_collection = True  # False: a bare PDS, listRepos only (401 for listReposByCollection)
        self.inactive: set[str] = set()  # listed by listRepos with active: false
        self.requests: list[tuple[str, dict[str, str]]] = []
        self._down_port = closed_port()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- building the network ----------------------------------------------------------------
    def add_pds(self, name: str, **knobs) -> FakePds:
        self.pdses[name] = FakePds(name, **knobs)
        return self.pdses[name]

    def add_repo(self, did: str, pds: str | None, records: list[dict] | None = None, *, in_relay: bool = True,
                 endpoint: str | None = None) -> None:
        self.accounts[did] = _Account(did, pds, endpoint)
        if pds is not None:
            self.pdses[pds].repos[did] = list(records or [])
        if in_relay:
            self.relay.append(did)

    # -- addresses -------------------------------------------------------------------------
    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def plc_url(self) -> str:
        return f"{self.base}/plc"

    @property
    def relay_url(self) -> str:
        return f"{self.base}/relay"

    def web_base(self, host: str) -> str:
        return f"{self.base}/web/{host}"

    def pds_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self._down_port}" if self.pdses[name].down else f"{self.base}/pds/{name}"

    def document(self, did: str) -> dict | None:
        account = self.accounts.get(did)
        if account is None:
            return None
        doc: dict = {
            "@context": ["https://www.w3.org/ns/did/v1", "https://w3id.org/security/multikey/v1"],
            "id": did,
            "alsoKnownAs": [f"at://{did.rsplit(':', 1)[-1][:8]}.test"],
            "verificationMethod": [{"id": f"{did}#atproto", "type": "Multikey", "controller": did,
                                    "publicKeyMultibase": "zQ3shXjHeiBuRCKmM36cuYnm7YEMzhGnCmCyW92sRJ9pribSF"}],
            "service": [],
        }
        if account.pds is not None or account.endpoint is not None:
            doc["service"].append({"id": "#atproto_pds", "type": "AtprotoPersonalDataServer",
                                   "serviceEndpoint": account.endpoint or self.pds_url(account.pds)})
        return doc

    def count(self, path_part: str, **query: str) -> int:
        """Requests whose path contains `path_part` and whose query has these values."""
        with self._lock:
            return sum(1 for path, q in self.requests
                       if path_part in path and all(q.get(k) == v for k, v in query.items()))

    # -- serving ---------------------------------------------------------------------------
    def handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        url = urlsplit(h.path)
        query = dict(parse_qsl(url.query))
        with self._lock:
            self.requests.append((url.path, query))
        status, body = self._route(unquote(url.path), query)
        data = json.dumps(body).encode()
        h.send_response(status)
        h.send_header("content-type", "application/json")
        h.send_header("content-length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _route(self, path: str, query: dict[str, str]) -> tuple[int, dict]:
        parts = path.strip("/").split("/")
        if parts[0] == "plc" and len(parts) == 2:
            doc = self.document(parts[1])
            return (200, doc) if doc else (404, {"message": f"DID not registered: {parts[1]}"})
        if parts[0] == "web" and parts[2:] == [".well-known", "did.json"]:
            doc = self.document(f"did:web:{parts[1]}")
            return (200, doc) if doc else (404, {"error": "NotFound"})
        if parts[0] == "relay" and parts[1:] == ["xrpc", LIST_REPOS]:
            if not self.by_collection:
                return 401, {"error": "AuthMissing", "message": "Authentication Required"}  # as the reference PDS
            return self._list_repos(query)
        if parts[0] == "relay" and parts[1:] == ["xrpc", "com.atproto.sync.listRepos"] and not self.by_collection:
            status, body = self._list_repos(query)
            for repo in body.get("repos", []):
                repo.update(head=fake_cid(repo["did"]), active=repo["did"] not in self.inactive)
            return status, body
        if parts[0] == "pds" and len(parts) == 4 and parts[2:] == ["xrpc", LIST_RECORDS]:
            return self._list_records(parts[1], query)
        return 404, {"error": "MethodNotImplemented", "message": f"no route for {path}"}

    def _list_repos(self, query: dict[str, str]) -> tuple[int, dict]:
        with self._lock:
            if self.relay_fail_times > 0:
                self.relay_fail_times -= 1
                return 502, {"error": "BadGateway"}
        limit = min(int(query.get("limit", 500)), self.relay_page_size)
        dids = sorted(self.relay)
        after = query.get("cursor")
        if after:
            dids = [d for d in dids if d > after]
        page = dids[:limit]
        body: dict = {"repos": [{"did": d, "rev": tid(i)} for i, d in enumerate(page)]}
        if len(dids) > limit:
            body["cursor"] = page[-1]
        return 200, body

    def _list_records(self, name: str, query: dict[str, str]) -> tuple[int, dict]:
        pds = self.pdses.get(name)
        if pds is None:
            return 404, {"error": "NotFound"}
        with self._lock:
            if pds.fail_times > 0:
                pds.fail_times -= 1
                return 500, {"error": "InternalServerError", "message": "Internal Server Error"}
        did = query.get("repo", "")
        if did not in pds.repos:
            return 400, {"error": "RepoNotFound", "message": f"Could not find repo: {did}"}
        if query.get("collection") != "fm.plyr.track":
            return 200, {"records": []}
        limit = min(int(query.get("limit", 50)), self.page_size)
        items = sorted(pds.repos[did], key=lambda r: r["uri"].rsplit("/", 1)[-1], reverse=True)
        if query.get("cursor"):
            items = [r for r in items if r["uri"].rsplit("/", 1)[-1] < query["cursor"]]
        page = items[:limit]
        body: dict = {"records": page}
        if page:
            body["cursor"] = page[-1]["uri"].rsplit("/", 1)[-1]
        return 200, body
