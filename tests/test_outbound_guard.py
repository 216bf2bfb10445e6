"""Every outbound request is vetted, whoever names the address: a stranger's DID document (its PDS
endpoint, its did:web host), the PLC directory, the PDS calls of backfill and `scan at://`.

The fake network (PLC, PDSes) listens on 127.0.0.1, which the tests allow as the media tests do
(`[media] allow_networks = ["127.0.0.1/32"]`). The "internal service" listens on 127.0.0.2, a
loopback address nobody allowed: it stands for a metadata endpoint or an admin port, and its
reply carries a secret that must never reach a log or a report.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from structlog.testing import capture_logs

from firehose_mod.ingest.backfill import run_backfill
from firehose_mod.ingest.resolve import DidResolver, ResolveError
from firehose_mod.ingest.verify import CommitVerifier
from firehose_mod.ops.dryrun import dry_run
from firehose_mod.scan.netguard import outbound_client
from firehose_mod.daemon import open_label_log
from firehose_mod.scan.registry import open_engine
from tests.fakes.http import LocalHTTPServer
from tests.fakes.jetstream import track_record
from tests.fakes.pds import FakeNetwork, fake_cid, make_records

pytestmark = pytest.mark.anyio

SECRET = "internal-metadata-token-7f3a"
EVIL = "did:plc:" + "e" * 24  # its DID document points its PDS at an internal address
GOOD = "did:plc:" + "g" * 24  # an ordinary account on the fake network
LOOPBACK_ONLY = ("127.0.0.1/32",)


class InternalService:
    """An HTTP service on 127.0.0.2 that answers everything with a secret (and counts requests)."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (stdlib name)
                service.requests.append(self.path)
                body = json.dumps({"error": "Internal", "message": SECRET, "records": [], "id": SECRET}).encode()
                self.send_response(400)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.2", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                        daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.2:{self._server.server_address[1]}"

    def __enter__(self) -> InternalService:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def internal() -> Iterator[InternalService]:
    with InternalService() as service:
        yield service


@pytest.fixture
def allowed(settings):
    """Settings as the test suites use them: 127.0.0.1 (the fakes) allowed, nothing else private."""
    return replace(settings, media_allow_networks=LOOPBACK_ONLY, media_allow_http=True)


async def fake_dns(host: str, port: int) -> list[str]:
    return {"pds.internal.test": ["10.20.30.40"], "mixed.internal.test": ["93.184.216.34", "192.168.1.9"]}[host]


def endpoints(internal: InternalService) -> dict[str, str]:
    return {"loopback": f"{internal.base}/pds", "metadata": "http://169.254.169.254",
            "mapped": f"http://[::ffff:127.0.0.2]:{internal.base.rsplit(':', 1)[1]}"}


def assert_secret_kept(logs: list[dict], internal: InternalService, *texts: str) -> None:
    assert internal.requests == []  # refused before connecting: nothing was even asked
    assert SECRET not in repr(logs)
    for text in texts:
        assert SECRET not in text


# -- backfill -------------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["loopback", "metadata", "mapped"])
async def test_backfill_refuses_a_pds_endpoint_at_an_internal_address(allowed, internal, where):
    with FakeNetwork() as net:
        net.add_pds("one")
        net.add_repo(GOOD, "one", make_records(GOOD, 2))
        net.add_repo(EVIL, None, endpoint=endpoints(internal)[where])
        with capture_logs() as logs:
            report = await run_backfill(allowed, dids=[EVIL, GOOD], plc_url=net.plc_url, retry_base=0.01)
    errors = dict(report.failures)
    assert "refusing to connect" in errors[EVIL], errors
    assert (report.repos_done, report.repos_failed, report.enqueued) == (1, 1, 2)  # the good repo is read
    assert "gave up" not in errors[EVIL]  # a refusal is not retried
    assert_secret_kept(logs, internal, *errors.values())


async def test_backfill_refuses_a_pds_hostname_that_resolves_to_a_private_address(allowed, internal):
    with FakeNetwork() as net:
        net.add_repo(EVIL, None, endpoint="https://pds.internal.test")
        net.add_repo(GOOD, None, endpoint="https://mixed.internal.test")  # one public answer is not enough
        async with outbound_client(allowed, resolve=fake_dns) as client:
            report = await run_backfill(allowed, dids=[EVIL, GOOD], client=client, retry_base=0.01,
                                        resolver=DidResolver(client, net.plc_url))
    errors = dict(report.failures)
    assert "10.20.30.40 is a private address" in errors[EVIL]
    assert "192.168.1.9 is a private address" in errors[GOOD]


async def test_backfill_with_default_settings_refuses_loopback_even_for_the_plc(settings, internal):
    with FakeNetwork() as net:
        net.add_pds("one")
        net.add_repo(GOOD, "one", make_records(GOOD, 2))
        report = await run_backfill(settings, dids=[GOOD], plc_url=net.plc_url, retry_base=0.01)
        assert net.requests == []
    assert "127.0.0.1 is a loopback address" in dict(report.failures)[GOOD]


# -- PLC and did:web ------------------------------------------------------------------------------

async def test_plc_and_did_web_lookups_are_vetted(settings, allowed, internal):
    port = internal.base.rsplit(":", 1)[1]
    async with outbound_client(allowed) as client:
        resolver = DidResolver(client, f"{internal.base}/plc")
        with pytest.raises(ResolveError, match="refusing to connect") as plc:
            await resolver.resolve_pds(GOOD)
        assert not plc.value.transient
        for did in (f"did:web:127.0.0.2%3A{port}", "did:web:169.254.169.254", "did:web:10.0.0.1"):
            with pytest.raises(ResolveError, match="refusing to connect") as web:
                await DidResolver(client).resolve_pds(did)
            assert SECRET not in str(web.value) and not web.value.transient
    async with outbound_client(settings) as client:  # the default allows nothing internal
        with pytest.raises(ResolveError, match="localhost: .* loopback address"):
            await DidResolver(client).resolve_pds("did:web:localhost")
    assert internal.requests == []


async def test_proxy_variables_cannot_route_around_the_vetting(allowed, internal, monkeypatch):
    # A proxy makes the connection itself: the vetted transport would never see the address.
    monkeypatch.setenv("HTTP_PROXY", internal.base)
    monkeypatch.setenv("ALL_PROXY", internal.base)
    with FakeNetwork() as net:
        net.add_repo(GOOD, None, endpoint="https://pds.example")
        async with outbound_client(allowed) as client:
            assert await DidResolver(client, net.plc_url).resolve_pds(GOOD) == "https://pds.example"
    assert internal.requests == []


class Redirector(LocalHTTPServer):
    """An allowed host (127.0.0.1) whose every answer redirects to `target`."""

    def __init__(self, target: str):
        self.target = target

    def handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        h.send_response(302)
        h.send_header("location", self.target)
        h.send_header("content-length", "0")
        h.end_headers()


async def test_a_redirect_to_an_internal_address_is_refused(allowed, internal):
    with Redirector(f"{internal.base}/did.json") as hop, capture_logs() as logs:
        async with outbound_client(allowed) as client:
            with pytest.raises(ResolveError, match="refusing to connect to 127.0.0.2") as exc:
                await DidResolver(client, f"http://127.0.0.1:{hop.port}/plc").resolve_pds(GOOD)
    assert_secret_kept(logs, internal, str(exc.value))


async def test_commit_verifier_key_lookups_are_vetted(allowed, internal):
    from tests.test_firehose_verify import create, proof_of

    async with CommitVerifier.http_client(allowed) as client:
        verifier = CommitVerifier(client, f"{internal.base}/plc")
        why = await verifier.check(proof_of(create(1)))
    assert "refusing to connect" in why and SECRET not in why
    assert internal.requests == []


async def test_the_scanners_resolver_is_vetted(allowed, internal):
    settings = replace(allowed, plc_url=f"{internal.base}/plc", scanners=("self-labels",))
    async with open_label_log(settings) as label_log, open_engine(settings, label_log) as scanning:
        with pytest.raises(ResolveError, match="refusing to connect"):
            await scanning.media.resolver.resolve_pds(GOOD)
    assert internal.requests == []


# -- scan at:// -----------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["loopback", "metadata"])
async def test_scan_at_uri_refuses_a_pds_endpoint_at_an_internal_address(allowed, internal, where):
    with FakeNetwork() as net:
        net.add_repo(EVIL, None, endpoint=endpoints(internal)[where])
        with capture_logs() as logs:
            report = await dry_run(replace(allowed, plc_url=net.plc_url), [f"at://{EVIL}/fm.plyr.track/3kabc"])
    (result,) = report.results
    assert result.status == "error" and "refusing to connect" in result.errors[0]["error"]
    assert_secret_kept(logs, internal, json.dumps(result.to_json()))


async def test_scan_at_uri_refuses_an_internal_plc(allowed, internal):
    with capture_logs() as logs:
        report = await dry_run(replace(allowed, plc_url=f"{internal.base}/plc"), [f"at://{GOOD}/fm.plyr.track/3k1"])
    (result,) = report.results
    assert result.status == "error" and "refusing to connect" in result.errors[0]["error"]
    assert_secret_kept(logs, internal, json.dumps(result.to_json()))


async def test_scan_at_uri_still_reads_an_allowed_pds(allowed):
    from tests.test_dryrun import PdsWithGetRecord

    with PdsWithGetRecord() as net:
        net.add_pds("one")
        net.add_repo(GOOD, "one", [{"uri": f"at://{GOOD}/fm.plyr.track/3k1", "cid": fake_cid("x"),
                                    "value": track_record("Fine Song")}])
        report = await dry_run(replace(allowed, plc_url=net.plc_url, scanners=("text",)),
                               [f"at://{GOOD}/fm.plyr.track/3k1"])
    (result,) = report.results
    assert result.errors == [] and result.uri == f"at://{GOOD}/fm.plyr.track/3k1"
