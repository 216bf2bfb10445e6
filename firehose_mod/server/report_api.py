"""Reports and appeals over XRPC, authenticated by the caller's atproto service JWT.

    POST /xrpc/com.atproto.moderation.createReport   the lexicon's input and output, as a labeler
         receives it from an appview, a PDS or a client (aud = our DID, lxm = the method)
    GET  /xrpc/fm.plyr.moderation.getAppeals          the caller's appeals and where each stands
         (ours: no lexicon of atproto's covers it; lxm = this NSID)

Refused tokens answer 401 with the verifier's error name (BadJwtSignature, JwtExpired, ...);
invalid reports 400 InvalidRequest; a reporter over its rate limit 429 RateLimitExceeded.
"""

from __future__ import annotations

from aiohttp import web

from firehose_mod.review.reports import ReportDesk, ReportRefused
from firehose_mod.server.service_auth import ServiceAuthError, ServiceAuthVerifier
from firehose_mod.server.xrpc import json_response, procedure, xrpc_error

CREATE_REPORT = "com.atproto.moderation.createReport"
GET_APPEALS = "fm.plyr.moderation.getAppeals"


def add_routes(r: web.UrlDispatcher, reports: ReportDesk, verifier: ServiceAuthVerifier) -> None:
    api = ReportApi(reports, verifier)
    r.add_post(f"/xrpc/{CREATE_REPORT}", procedure(api.create_report))
    r.add_get(f"/xrpc/{GET_APPEALS}", api.get_appeals)


class ReportApi:
    def __init__(self, reports: ReportDesk, verifier: ServiceAuthVerifier):
        self.reports, self.verifier = reports, verifier

    async def create_report(self, request: web.Request, body: dict) -> web.Response:
        try:
            caller = await self.verifier.verify(request.headers.get("Authorization"), CREATE_REPORT)
            return json_response(await self.reports.receive(caller.did, caller.service, body))
        except ServiceAuthError as exc:
            return _auth_error(exc)
        except ReportRefused as exc:
            if exc.rate_limited:
                return xrpc_error(429, "RateLimitExceeded", str(exc))
            return xrpc_error(400, "InvalidRequest", str(exc))

    async def get_appeals(self, request: web.Request) -> web.Response:
        try:
            caller = await self.verifier.verify(request.headers.get("Authorization"), GET_APPEALS)
        except ServiceAuthError as exc:
            return _auth_error(exc)
        return json_response({"appeals": await self.reports.appeals(caller.did)})


def _auth_error(exc: ServiceAuthError) -> web.Response:
    if exc.transient:
        return xrpc_error(503, "DidResolutionFailed", f"{exc.message} (try again shortly)")
    return xrpc_error(401, exc.error, exc.message)
