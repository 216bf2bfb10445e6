"""Network guard for fetching strangers' URLs: vet every address a connection would use.

A connection goes through `_VettingBackend`: it resolves the host itself, refuses if *any*
answer is loopback, private, link-local, CGNAT, multicast, reserved or unspecified (IPv4
inside IPv6 and NAT64 included), then connects to exactly those vetted addresses, so a DNS
answer that changes between the check and the connection (rebinding) cannot slip through.
`allow_networks` opens chosen networks (tests, a deliberate operator) and nothing else; the
settings `[media] allow_networks` and `[media] allow_loopback_for_testing_only` (a PDS, PLC and
relay on this machine: the reference-PDS tests) feed it, through `allowed_networks`.

Every outbound HTTP request of the labeler goes through such a connection: media (`SafeFetcher`),
and the clients of `vetted_client` / `outbound_client` for DID documents (PLC, did:web), PDS
calls (listRecords, getRecord) and relay listings. A refusal raises `UnsafeAddress` before any
byte is sent, so nothing an internal service would answer can reach a log.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

import anyio
import httpcore
import httpx

from firehose_mod.scan.base import MediaError

_SHARED = ipaddress.ip_network("100.64.0.0/10")  # CGNAT: neither private nor global in Python
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # reaches the IPv4 address in its low 32 bits

USER_AGENT = "firehose-mod (plyr.fm moderation labeler)"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolve = Callable[[str, int], Awaitable[list[str]]]


class UnsafeAddress(MediaError):
    """The host is, or resolves to, an address a labeler must never contact."""


def address_problem(ip: IPAddress, allow: Iterable[IPNetwork] = ()) -> str | None:
    """Why `ip` must not be contacted, or None if it may be (pure)."""
    allow = tuple(allow)
    if any(ip.version == net.version and ip in net for net in allow):
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        inner = ip.ipv4_mapped or ip.sixtofour
        if inner is None and ip in _NAT64:
            inner = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if inner is not None:
            why = address_problem(inner, allow)
            return f"{why} (inside {ip})" if why else None
    for attr, kind in (("is_unspecified", "unspecified"), ("is_loopback", "loopback"),
                       ("is_link_local", "link-local"), ("is_multicast", "multicast"),
                       ("is_private", "private"), ("is_reserved", "reserved")):
        if getattr(ip, attr):
            return f"{ip} is a {kind} address"
    if ip in _SHARED:
        return f"{ip} is a shared (CGNAT) address"
    if not ip.is_global:
        return f"{ip} is not a global address"
    return None


async def system_resolve(host: str, port: int) -> list[str]:
    """All addresses `host` resolves to (the default resolver of the vetting backend)."""
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


async def vetted_addresses(host: str, port: int, allow: Iterable[IPNetwork] = (),
                           resolve: Resolve = system_resolve) -> list[str]:
    """The addresses of `host`, if every one of them may be contacted; else UnsafeAddress."""
    try:
        literal: IPAddress | None = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        literal = None
    if literal is not None:
        answers = [str(literal)]
    else:
        try:
            answers = await resolve(host, port)
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from None
    vetted: list[str] = []
    for answer in answers:
        ip = ipaddress.ip_address(answer.split("%", 1)[0])
        why = address_problem(ip, allow)
        if why:
            raise UnsafeAddress(f"refusing to connect to {host}: {why}")
        if str(ip) not in vetted:
            vetted.append(str(ip))
    if not vetted:
        raise httpcore.ConnectError(f"{host} has no addresses")
    return vetted


class _VettingBackend(httpcore.AsyncNetworkBackend):
    """httpcore's anyio backend, but every TCP connect goes to vetted addresses only."""

    def __init__(self, allow: tuple[IPNetwork, ...], resolve: Resolve):
        self._inner = httpcore.AnyIOBackend()
        self._allow = allow
        self._resolve = resolve

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None, socket_options: Any = None) -> httpcore.AsyncNetworkStream:
        error: Exception | None = None
        for ip in await vetted_addresses(host, port, self._allow, self._resolve):
            try:
                return await self._inner.connect_tcp(ip, port, timeout=timeout, local_address=local_address,
                                                     socket_options=socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Any = None) -> httpcore.AsyncNetworkStream:
        raise UnsafeAddress("unix sockets are never used for media")

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


class VettedTransport(httpx.AsyncHTTPTransport):
    """An httpx transport that never uses proxies or the environment and vets every connection."""

    def __init__(self, *, allow: Iterable[IPNetwork] = (), resolve: Resolve = system_resolve,
                 max_connections: int = 20):
        ssl_context = httpx.create_ssl_context(trust_env=False)
        super().__init__(verify=ssl_context, trust_env=False)
        # httpx takes no network backend, so the pool it built is swapped for one that has ours.
        if not isinstance(getattr(self, "_pool", None), httpcore.AsyncConnectionPool):
            raise RuntimeError("this httpx version builds its pool differently; VettedTransport needs updating")
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context, max_connections=max_connections,
            max_keepalive_connections=max_connections // 2, keepalive_expiry=5.0,
            network_backend=_VettingBackend(tuple(allow), resolve),
        )


def parse_networks(networks: Iterable[str | IPNetwork]) -> tuple[IPNetwork, ...]:
    """`["127.0.0.1/32", ...]` -> networks; raises ValueError naming the bad entry."""
    out = []
    for net in networks:
        try:
            out.append(net if not isinstance(net, str) else ipaddress.ip_network(net.strip(), strict=False))
        except ValueError:
            raise ValueError(f"not an IP network: {net!r} (expected e.g. 127.0.0.1/32)") from None
    return tuple(out)


def vetted_client(*, allow_networks: Iterable[str | IPNetwork] = (), resolve: Resolve = system_resolve,
                  timeout: float = 30.0, connect_timeout: float = 10.0, max_redirects: int = 3,
                  user_agent: str = USER_AGENT) -> httpx.AsyncClient:
    """An httpx client whose every connection, redirects included, goes to vetted addresses only.

    For JSON calls to addresses strangers choose (DID documents, PDSes) and to the PLC directory
    and relays. No proxies and nothing from the environment (`trust_env=False`): a proxy would
    make the connection, and the vetting, somewhere else. A refused address raises
    `UnsafeAddress` (not an `httpx.HTTPError`) from the request; callers turn it into their own
    permanent error. `allow_networks` as for `VettedTransport`; `resolve` replaces DNS (tests).
    """
    return httpx.AsyncClient(
        transport=VettedTransport(allow=parse_networks(allow_networks), resolve=resolve),
        trust_env=False, follow_redirects=max_redirects > 0, max_redirects=max_redirects,
        timeout=httpx.Timeout(timeout, connect=min(connect_timeout, timeout)), headers={"user-agent": user_agent},
    )


class _NetSettings(Protocol):
    media_allow_networks: tuple[str, ...]
    media_allow_loopback_for_testing_only: bool


def allowed_networks(settings: _NetSettings) -> tuple[str, ...]:
    """The configured allow-list of every outbound request: `[media] allow_networks`, plus loopback
    (127.0.0.0/8 and ::1) when `[media] allow_loopback_for_testing_only` is on. Empty by default."""
    from firehose_mod.config import LOOPBACK_NETWORKS

    loopback = LOOPBACK_NETWORKS if getattr(settings, "media_allow_loopback_for_testing_only", False) else ()
    return tuple(settings.media_allow_networks) + loopback


def warn_if_opened(settings: _NetSettings, log: Any, *, command: str) -> None:
    """Log a warning when configuration lets outbound requests reach non-public addresses (call at start)."""
    if getattr(settings, "media_allow_loopback_for_testing_only", False):
        log.warning("netguard.loopback_allowed", command=command, networks=list(allowed_networks(settings)),
                    setting="[media] allow_loopback_for_testing_only",
                    hint="TESTING ONLY: any record or DID document can now make this labeler fetch from this"
                         " machine's own services; turn it off in production")
    elif settings.media_allow_networks:
        log.warning("netguard.networks_allowed", command=command, networks=list(settings.media_allow_networks),
                    setting="[media] allow_networks",
                    hint="records and DID documents can make this labeler fetch from these private networks")


def outbound_client(settings: _NetSettings, *, resolve: Resolve = system_resolve, **kw: Any) -> httpx.AsyncClient:
    """`vetted_client` with the configured allow-list (`allowed_networks`, which covers every
    outbound request: empty by default, so nothing private, loopback or link-local is reached)."""
    return vetted_client(allow_networks=allowed_networks(settings), resolve=resolve, **kw)
