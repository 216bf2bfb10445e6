"""One frozen settings object: embedded defaults < TOML file < FIREHOSE_MOD_* environment.

Every field has a TOML home (`[section] key`) and an environment variable
(`FIREHOSE_MOD_<FIELD>` in upper case). `load_settings` validates everything at start and
raises `ConfigError` with a message that names the source and says how to fix it. The file is
--config, else FIREHOSE_MOD_CONFIG, else `config.toml` among systemd's credentials (the unit's
`LoadCredential=`); an unknown FIREHOSE_MOD_* variable is refused like an unknown TOML key.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from firehose_mod.syntax import IdentifierError, check_collection_pattern, check_did, is_atproto_did, is_handle

ENV_PREFIX = "FIREHOSE_MOD_"
ROLES = ("all", "ingest", "scan", "serve")  # `run --role`: see firehose_mod/roles.py
LOOPBACK_NETWORKS = ("127.0.0.0/8", "::1/128")  # what [media] allow_loopback_for_testing_only opens


class ConfigError(ValueError):
    """Invalid configuration; the message names the setting and how to fix it."""


def _meta(section: str, key: str, help: str) -> dict:
    return {"section": section, "key": key, "help": help}


@dataclass(frozen=True)
class Settings:
    """Everything the daemon and the operator commands read from configuration."""

    data_dir: Path = field(default=Path("var"), metadata=_meta("", "data_dir", "state directory (database, key)"))
    host: str = field(default="127.0.0.1", metadata=_meta("server", "host", "address to listen on"))
    port: int = field(default=8080, metadata=_meta("server", "port", "TCP port to listen on (0 = any free port)"))
    public_url: str = field(
        default="", metadata=_meta("server", "public_url", "https URL clients use (DID document service endpoint)")
    )
    did: str = field(default="did:web:localhost", metadata=_meta("labeler", "did", "the labeler's DID (label src)"))
    key_file: Path | None = field(
        default=None, metadata=_meta("labeler", "key_file", "signing key file (default DATA_DIR/signing.key)")
    )
    key_curve: str = field(default="secp256k1", metadata=_meta("labeler", "key_curve", "secp256k1 or p256"))
    labeler_declaration_file: Path | None = field(
        default=None, metadata=_meta("labeler", "declaration_file",
                                     "label value definitions and report reasons to declare (TOML); default: built in"))
    labeler_handle: str = field(default="", metadata=_meta("labeler", "handle",
                                                           "the account `declare --apply` logs in as (default: did)"))
    labeler_app_password: str = field(default="", repr=False, metadata=_meta(
        "labeler", "app_password", "its app password for `declare --apply` (never logged)"))
    labeler_app_password_file: Path | None = field(default=None, metadata=_meta(
        "labeler", "app_password_file", "a file holding the app password instead (mode 600, or a systemd credential)"))
    db_file: Path | None = field(
        default=None, metadata=_meta("store", "db_file", "SQLite database (default DATA_DIR/firehose-mod.sqlite3)")
    )
    db_synchronous: str = field(
        default="FULL", metadata=_meta("store", "synchronous", "SQLite synchronous: FULL survives power loss")
    )
    db_busy_wait: float = field(
        default=30.0, metadata=_meta("store", "busy_wait",
                                     "seconds an operator command waits for another process's write lock"
                                     " (the daemon waits as long as it takes)")
    )
    database_url: str = field(
        default="", repr=False, metadata=_meta(
            "store", "database_url",
            "postgresql://USER:PASSWORD@HOST:PORT/DB: every table on PostgreSQL, shared by several"
            " processes on several machines (empty: the SQLite file; never logged)")
    )
    stream_send_timeout: float = field(
        default=10.0,
        metadata=_meta("stream", "send_timeout", "seconds a subscriber may block a send before ConsumerTooSlow"),
    )
    stream_ping_interval: float = field(
        default=20.0, metadata=_meta("stream", "ping_interval", "seconds between keepalive pings")
    )
    stream_ping_timeout: float = field(
        default=20.0, metadata=_meta("stream", "ping_timeout", "seconds to wait for a pong before closing")
    )
    stream_recent_labels: int = field(
        default=20000, metadata=_meta("stream", "recent_labels", "recent frames kept in memory for live fan-out")
    )
    stream_page_size: int = field(
        default=200, metadata=_meta("stream", "page_size", "labels read from the database per backfill page")
    )
    stream_max_subscribers: int = field(
        default=5000, metadata=_meta("stream", "max_subscribers", "subscribers beyond this are refused (503)")
    )
    stream_poll_interval: float = field(
        default=0.25,
        metadata=_meta("stream", "poll_interval", "seconds between checks for labels written by other processes"),
    )
    ingest_source: str = field(
        default="jetstream", metadata=_meta("ingest", "source", "jetstream, firehose, or none (serve labels only)")
    )
    collections: tuple[str, ...] = field(
        default=("fm.plyr.track",), metadata=_meta("ingest", "collections", "NSIDs or prefixes like fm.plyr.*")
    )
    jetstream_endpoints: tuple[str, ...] = field(
        default=("wss://jetstream1.us-east.bsky.network", "wss://jetstream2.us-east.bsky.network"),
        metadata=_meta("ingest", "jetstream_endpoints", "Jetstream base URLs, tried in turn (failover)"),
    )
    jetstream_compress: bool = field(
        default=True, metadata=_meta("ingest", "jetstream_compress", "zstd frames with Jetstream's dictionary")
    )
    relay_endpoints: tuple[str, ...] = field(
        default=("wss://bsky.network",), metadata=_meta("ingest", "relay_endpoints", "relay base URLs for firehose")
    )
    plc_url: str = field(
        default="https://plc.directory", metadata=_meta("ingest", "plc_url", "PLC directory for DID resolution")
    )
    ingest_read_timeout: float = field(
        default=60.0, metadata=_meta("ingest", "read_timeout", "seconds of silence before reconnecting")
    )
    verify_commits: bool = field(
        default=False,
        metadata=_meta("ingest", "verify_commits", "check firehose commit signatures against the author's DID key"),
    )
    negate_on_delete: bool = field(
        default=True, metadata=_meta("ingest", "negate_on_delete", "negate a track's labels when it is deleted")
    )
    scan_workers: int = field(default=2, metadata=_meta("scan", "workers", "concurrent scan jobs"))
    role: str = field(
        default="all", metadata=_meta(
            "", "role", "what this process runs: all, or one of ingest, scan, serve (with an optional -NAME, e.g."
            " scan-2, naming the instance) when several processes share the database")
    )
    scan_lease: float = field(
        default=300.0, metadata=_meta(
            "scan", "lease", "seconds a scan process holds a claimed job between renewals; a dead process's jobs"
            " are taken again after this")
    )
    scanners: tuple[str, ...] = field(
        default=("self-labels", "text", "cover-art", "copyright"),
        metadata=_meta("scan", "scanners", "enabled scanners (audd is added by [audd] enabled)"),
    )
    pdq_blocklist: Path | None = field(
        default=None, metadata=_meta("scan", "pdq_blocklist", "known-bad cover hashes: 'hex [value] [# note]' lines")
    )
    text_blocklist: Path | None = field(
        default=None, metadata=_meta("scan", "text_blocklist", "operator terms: 'term WORDS [-> value]' or 're RE'")
    )
    cover_nsfw: bool = field(default=True, metadata=_meta("scan", "cover_nsfw", "score covers with open_nsfw"))
    scan_timeout: float = field(default=300.0, metadata=_meta("scan", "timeout", "seconds one scanner may take"))
    policy_file: Path | None = field(
        default=None, metadata=_meta("scan", "policy_file", "policy rules (TOML); default: the built-in policy")
    )
    media_cache_max_mb: int = field(default=4096, metadata=_meta("media", "cache_max_mb", "download cache bound"))
    media_max_audio_mb: int = field(default=100, metadata=_meta("media", "max_audio_mb", "largest audio fetched"))
    media_max_image_mb: int = field(default=10, metadata=_meta("media", "max_image_mb", "largest cover fetched"))
    media_timeout: float = field(default=60.0, metadata=_meta("media", "timeout", "seconds for one whole fetch"))
    media_max_redirects: int = field(default=3, metadata=_meta("media", "max_redirects", "redirect hops followed"))
    media_allow_networks: tuple[str, ...] = field(
        default=(), metadata=_meta("media", "allow_networks", "private networks that may be fetched (tests only)")
    )
    media_allow_http: bool = field(default=False, metadata=_meta("media", "allow_http", "also fetch plain http"))
    media_allow_loopback_for_testing_only: bool = field(
        default=False, metadata=_meta("media", "allow_loopback_for_testing_only",
                                      "let every outbound request reach loopback (a PDS, PLC or relay on this"
                                      " machine); never in production, warned at start")
    )
    audd_enabled: bool = field(default=False, metadata=_meta("audd", "enabled", "ask AudD when nothing matched locally"))
    audd_api_token: str = field(default="", metadata=_meta("audd", "api_token", "AudD API token"))
    audd_endpoint: str = field(default="https://enterprise.audd.io/", metadata=_meta("audd", "endpoint", "AudD URL"))
    audd_skip: int = field(default=1, metadata=_meta("audd", "skip", "AudD: 12 s chunks skipped between samples"))
    audd_every: int = field(default=1, metadata=_meta("audd", "every", "AudD: chunks sampled in a row"))
    audd_limit: int = field(default=1, metadata=_meta("audd", "limit", "AudD: matches returned per chunk"))
    audd_cost_per_unit_usd: float = field(
        default=0.005, metadata=_meta("audd", "cost_per_unit_usd", "price of one 12 s request, for metrics")
    )
    audd_max_units_per_track: int = field(
        default=60, metadata=_meta("audd", "max_units_per_track", "cost cap: chunks per track at most")
    )
    plyr_compat_enabled: bool = field(default=False, metadata=_meta(
        "plyr_compat", "enabled", "serve plyr.fm's moderation-service API (its backend's /internal/*, /scan, ...)"))
    plyr_compat_key: str = field(default="", repr=False, metadata=_meta(
        "plyr_compat", "key", "the shared key plyr.fm's backend sends as X-Moderation-Key (never logged)"))
    plyr_compat_key_file: Path | None = field(default=None, metadata=_meta(
        "plyr_compat", "key_file", "a file holding the key instead (mode 600, or a systemd credential)"))
    plyr_compat_actor: str = field(default="plyr-backend", metadata=_meta(
        "plyr_compat", "actor", "the system actor plyr.fm's decisions are recorded as in the moderation event log"))
    review_operator: str = field(
        default="", metadata=_meta("review", "operator", "operator the CLI's review commands act as without --as")
    )
    triage_enabled: bool = field(default=False, metadata=_meta("triage", "enabled", "let an LLM propose decisions"))
    triage_provider: str = field(default="openai", metadata=_meta("triage", "provider", "openai (any"
                                                                  " /chat/completions server) or anthropic"))
    triage_endpoint: str = field(default="", metadata=_meta("triage", "endpoint", "API base URL (default: the"
                                                            " provider's own)"))
    triage_model: str = field(default="", metadata=_meta("triage", "model", "model name"))
    triage_api_key: str = field(default="", metadata=_meta("triage", "api_key", "API key"))
    triage_agent_name: str = field(default="triage", metadata=_meta("triage", "agent_name",
                                                                    "the agent's name in the event log"))
    triage_kinds: tuple[str, ...] = field(default=("copyright", "cover-art", "text"),
                                          metadata=_meta("triage", "kinds", "item kinds sent to the model"))
    triage_auto_apply: tuple[str, ...] = field(
        default=(), metadata=_meta("triage", "auto_apply", "item kinds whose FALSE_POSITIVE proposals are applied"))
    triage_send_media: bool = field(default=False, metadata=_meta("triage", "send_media",
                                                                  "also send the cover image URL"))
    triage_batch_size: int = field(default=20, metadata=_meta("triage", "batch_size", "items per triage pass"))
    triage_concurrency: int = field(default=2, metadata=_meta("triage", "concurrency", "calls in flight at once"))
    triage_max_retries: int = field(default=3, metadata=_meta("triage", "max_retries",
                                                              "retries of a call (429, 5xx, 529, timeouts)"))
    triage_timeout: float = field(default=60.0, metadata=_meta("triage", "timeout", "seconds one call may take"))
    triage_interval: float = field(default=60.0, metadata=_meta("triage", "interval", "seconds between passes"))
    triage_daily_budget_usd: float = field(default=1.0, metadata=_meta("triage", "daily_budget_usd",
                                                                       "spend cap per UTC day"))
    triage_price_input_per_mtok: float = field(default=0.0, metadata=_meta("triage", "price_input_per_mtok",
                                                                           "USD per million input tokens"))
    triage_price_output_per_mtok: float = field(default=0.0, metadata=_meta("triage", "price_output_per_mtok",
                                                                            "USD per million output tokens"))
    triage_max_tokens: int = field(default=512, metadata=_meta("triage", "max_tokens", "answer length cap"))
    notify_webhook_url: str = field(default="", metadata=_meta("notify", "webhook_url",
                                                               "POST a signed JSON notice here when items wait"))
    notify_webhook_secret: str = field(default="", metadata=_meta("notify", "webhook_secret",
                                                                  "HMAC-SHA256 key for the notice's signature"))
    notify_interval: float = field(default=900.0, metadata=_meta("notify", "interval",
                                                                 "seconds between notices at most"))
    notify_dm_recipients: tuple[str, ...] = field(default=(), metadata=_meta("notify", "dm_recipients",
                                                                             "DIDs to send a Bluesky DM"))
    notify_dm_handle: str = field(default="", metadata=_meta("notify", "dm_handle", "account the DMs come from"))
    notify_dm_password: str = field(default="", metadata=_meta("notify", "dm_password", "its app password"))
    notify_dm_service: str = field(default="https://bsky.social", metadata=_meta("notify", "dm_service",
                                                                               "that account's PDS"))
    transparency_enabled: bool = field(default=False, metadata=_meta(
        "transparency", "enabled", "post a public summary of decided review items from the labeler account"))
    transparency_interval: float = field(default=86400.0, metadata=_meta(
        "transparency", "interval", "seconds between summary posts at most (one post per batch)"))
    transparency_name_uploaders: bool = field(default=False, metadata=_meta(
        "transparency", "name_uploaders", "name the accounts labeled (handles or DIDs) in the summary"))
    transparency_dry_run: bool = field(default=False, metadata=_meta(
        "transparency", "dry_run", "log each summary instead of posting it (records nothing)"))
    log_level: str = field(default="info", metadata=_meta("log", "level", "debug, info, warning or error"))
    log_format: str = field(
        default="auto", metadata=_meta("log", "format", "auto (console on a terminal, else JSON), json or console")
    )

    @property
    def db_path(self) -> Path:
        return self.db_file or self.data_dir / "firehose-mod.sqlite3"

    @property
    def key_path(self) -> Path:
        return self.key_file or self.data_dir / "signing.key"

    @property
    def endpoint(self) -> str:
        """The URL this server answers on, for clients on this machine."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def _coerce(f: dataclasses.Field, raw: Any, source: str) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    try:
        if kind.startswith("tuple"):
            if isinstance(raw, str):
                raw = [part.strip() for part in raw.split(",") if part.strip()]
            if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
                raise ValueError
            return tuple(raw)
        if kind == "bool":
            if isinstance(raw, bool):
                return raw
            if isinstance(raw, str) and raw.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                return raw.lower() in ("1", "true", "yes", "on")
            raise ValueError
        if "Path" in kind:
            return None if raw in ("", None) else Path(str(raw)).expanduser()
        if kind == "int":
            if isinstance(raw, bool):
                raise ValueError
            return int(raw)
        if kind == "float":
            if isinstance(raw, bool):
                raise ValueError
            return float(raw)
        if not isinstance(raw, (str, int, float)):
            raise ValueError
        return str(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: expected {kind.replace(' | None', '')}, got {raw!r}") from None


def load_settings(
    config_file: Path | None = None, env: Mapping[str, str] | None = None, **overrides: Any
) -> Settings:
    """Build and validate Settings from the TOML file, the environment and explicit overrides."""
    env = os.environ if env is None else env
    _check_env_names(env)
    config_file = config_file or _default_config_file(env)
    values: dict[str, Any] = {}
    by_place = {(f.metadata["section"], f.metadata["key"]): f for f in fields(Settings)}
    if config_file is not None:
        try:
            doc = tomllib.loads(Path(config_file).read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {config_file} is not valid TOML: {exc}") from exc
        for key, raw in doc.items():
            if isinstance(raw, dict):
                for sub, subraw in raw.items():
                    f = by_place.get((key, sub))
                    if f is None:
                        raise ConfigError(f"{config_file}: unknown setting [{key}] {sub}; see config/example.toml")
                    values[f.name] = _coerce(f, subraw, f"{config_file} [{key}] {sub}")
            else:
                f = by_place.get(("", key))
                if f is None:
                    raise ConfigError(f"{config_file}: unknown top-level setting {key!r}; see config/example.toml")
                values[f.name] = _coerce(f, raw, f"{config_file} {key}")
    for f in fields(Settings):
        if env.get(env_name(f.name)) not in (None, ""):
            values[f.name] = _coerce(f, env[env_name(f.name)], env_name(f.name))
    for name, raw in overrides.items():
        if raw is not None:
            values[name] = raw
    settings = Settings(**values)
    validate(settings)
    return settings


def _default_config_file(env: Mapping[str, str]) -> Path | None:
    """FIREHOSE_MOD_CONFIG, else config.toml in systemd's $CREDENTIALS_DIRECTORY (the unit's LoadCredential=)."""
    if env.get(env_name("config")):
        return Path(env[env_name("config")])
    credential = Path(env.get("CREDENTIALS_DIRECTORY") or "/nonexistent") / "config.toml"
    return credential if credential.is_file() else None


def _check_env_names(env: Mapping[str, str]) -> None:
    """A FIREHOSE_MOD_* variable that names no setting is a typo: refuse it, naming the closest one."""
    import difflib

    known = {env_name(f.name) for f in fields(Settings)} | {env_name("config")}
    for name in sorted(n for n in env if n.startswith(ENV_PREFIX) and n not in known):
        close = difflib.get_close_matches(name[len(ENV_PREFIX):], [k[len(ENV_PREFIX):] for k in known], n=1)
        hint = f"did you mean {ENV_PREFIX}{close[0]}?" if close else "see config/example.toml for the settings"
        raise ConfigError(f"unknown environment variable {name}: {hint}")


def validate(s: Settings) -> None:
    """Raise ConfigError for values that cannot work, saying how to fix them."""

    def bad(name: str, why: str) -> ConfigError:
        f = next(f for f in fields(Settings) if f.name == name)
        place = f"[{f.metadata['section']}] {f.metadata['key']}" if f.metadata["section"] else f.metadata["key"]
        return ConfigError(f"{place} (env {env_name(name)}): {why}")

    if not 0 <= s.port <= 65535:
        raise bad("port", f"{s.port} is not a TCP port (0-65535)")
    try:
        check_did(s.did, what="the labeler DID")
    except IdentifierError as exc:
        raise bad("did", str(exc)) from None
    if s.key_curve not in ("secp256k1", "p256"):
        raise bad("key_curve", f"{s.key_curve!r}: use secp256k1 (the atproto default) or p256")
    if s.db_synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
        raise bad("db_synchronous", f"{s.db_synchronous!r}: use FULL, EXTRA or NORMAL (NORMAL may lose labels on power loss)")
    if s.database_url and not s.database_url.startswith(("postgresql://", "postgres://")):
        raise bad("database_url", "must be a postgresql://USER:PASSWORD@HOST:PORT/DB URL, or empty for SQLite")
    for name in ("stream_send_timeout", "stream_ping_interval", "stream_ping_timeout", "stream_poll_interval"):
        if getattr(s, name) <= 0:
            raise bad(name, "must be a positive number of seconds")
    for name in ("stream_recent_labels", "stream_page_size", "stream_max_subscribers"):
        if getattr(s, name) < 1:
            raise bad(name, "must be at least 1")
    if s.log_level.lower() not in ("debug", "info", "warning", "error"):
        raise bad("log_level", f"{s.log_level!r}: use debug, info, warning or error")
    if s.log_format not in ("auto", "json", "console"):
        raise bad("log_format", f"{s.log_format!r}: use auto, json or console")
    if s.public_url and not s.public_url.startswith(("https://", "http://")):
        raise bad("public_url", f"{s.public_url!r} must start with https://")
    if s.ingest_source not in ("jetstream", "firehose", "none"):
        raise bad("ingest_source", f"{s.ingest_source!r}: use jetstream (default), firehose or none")
    if not s.collections:
        raise bad("collections", "no collections wanted: name one, e.g. fm.plyr.track")
    for pattern in s.collections:
        try:
            check_collection_pattern(pattern)
        except IdentifierError as exc:
            raise bad("collections", str(exc)) from None
    for name in ("jetstream_endpoints", "relay_endpoints"):
        for url in getattr(s, name):
            if not url.startswith(("ws://", "wss://")):
                raise bad(name, f"{url!r} must be a ws:// or wss:// URL")
    if s.verify_commits and s.ingest_source != "firehose":
        raise bad("verify_commits", "needs [ingest] source = \"firehose\": Jetstream does not forward commit signatures")
    if not s.plc_url.startswith(("https://", "http://")):
        raise bad("plc_url", f"{s.plc_url!r} must be an https:// URL")
    if s.ingest_read_timeout <= 0:
        raise bad("ingest_read_timeout", "must be a positive number of seconds")
    if s.role.split("-", 1)[0] not in ROLES or not re.fullmatch(r"[a-z]+(-[A-Za-z0-9_.]{1,32})?", s.role):
        raise bad("role", f"{s.role!r}: use all, ingest, scan or serve, optionally with -NAME (scan-2)")
    if s.scan_lease < 3:
        raise bad("scan_lease", "must be at least 3 seconds (it is renewed every third of it)")
    if s.scan_workers < 1:
        raise bad("scan_workers", "must be at least 1")
    # Scanner names are checked against the registry's table (scan/registry.py `enabled`).
    if s.labeler_handle and not (is_handle(s.labeler_handle) or is_atproto_did(s.labeler_handle)):
        raise bad("labeler_handle", f"{s.labeler_handle!r} is neither a handle (name.example.com) nor a DID")
    if s.labeler_app_password and s.labeler_app_password_file:
        raise bad("labeler_app_password_file", "set the app password or a file holding it, not both")
    for name in ("pdq_blocklist", "text_blocklist", "policy_file", "labeler_declaration_file",
                 "labeler_app_password_file"):
        path = getattr(s, name)
        if path is not None and not path.is_file():
            raise bad(name, f"{path} does not exist or is not a file")
    if s.scan_timeout <= 0 or s.media_timeout <= 0:
        raise bad("scan_timeout" if s.scan_timeout <= 0 else "media_timeout", "must be a positive number of seconds")
    for name in ("media_cache_max_mb", "media_max_audio_mb", "media_max_image_mb"):
        if getattr(s, name) < 1:
            raise bad(name, "must be at least 1")
    for net in s.media_allow_networks:  # as scan.netguard.parse_networks reads them
        try:
            ipaddress.ip_network(net.strip(), strict=False)
        except ValueError:
            raise bad("media_allow_networks", f"not an IP network: {net!r} (expected e.g. 127.0.0.1/32)") from None
    _validate_review(s, bad)
    if s.audd_enabled and not s.audd_api_token:
        raise bad("audd_api_token", "AudD is enabled but has no token: set FIREHOSE_MOD_AUDD_API_TOKEN or disable it")
    for name in ("audd_skip", "audd_every", "audd_limit", "audd_max_units_per_track"):
        if getattr(s, name) < (0 if name == "audd_skip" else 1):
            raise bad(name, "out of range")
    _validate_plyr_compat(s, bad)


def _validate_plyr_compat(s: Settings, bad) -> None:
    """[plyr_compat]: the key file's mode and contents are checked when the daemon starts (compat/plyr.py)."""
    import re

    if s.plyr_compat_key and s.plyr_compat_key_file:
        raise bad("plyr_compat_key_file", "set the key or a file holding it, not both")
    if s.plyr_compat_enabled and not (s.plyr_compat_key or s.plyr_compat_key_file):
        raise bad("plyr_compat_enabled", "needs the shared key plyr.fm's backend sends as X-Moderation-Key: set"
                                         " FIREHOSE_MOD_PLYR_COMPAT_KEY or [plyr_compat] key_file (mode 600)")
    if s.plyr_compat_key and (len(s.plyr_compat_key) < 16 or any(c.isspace() for c in s.plyr_compat_key)):
        raise bad("plyr_compat_key", "use at least 16 characters without spaces, e.g. python3 -c 'import secrets;"
                                     " print(secrets.token_urlsafe(32))' (and the same in plyr.fm's backend)")
    if s.plyr_compat_key_file is not None and not s.plyr_compat_key_file.is_file():
        raise bad("plyr_compat_key_file", f"{s.plyr_compat_key_file} does not exist or is not a file")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._@:-]{0,63}", s.plyr_compat_actor):
        raise bad("plyr_compat_actor", f"{s.plyr_compat_actor[:80]!r}: use 1-64 letters, digits, '.', '_', '@', ':'"
                                       " or '-'")


def _validate_review(s: Settings, bad) -> None:
    """[review], [triage], [notify] and [transparency]."""
    from firehose_mod.review.states import KINDS

    if s.triage_provider not in ("openai", "anthropic"):
        raise bad("triage_provider", f"{s.triage_provider!r}: use openai (or a compatible server) or anthropic")
    if s.triage_enabled and not s.triage_model:
        raise bad("triage_model", "triage is enabled but no model is named")
    for name in ("triage_kinds", "triage_auto_apply"):
        if unknown := [k for k in getattr(s, name) if k not in KINDS]:
            raise bad(name, f"unknown item kind {unknown[0]!r}: use {', '.join(KINDS)}")
    for name in ("triage_batch_size", "triage_concurrency", "triage_max_tokens"):
        if getattr(s, name) < 1:
            raise bad(name, "must be at least 1")
    for name in ("triage_timeout", "triage_interval", "notify_interval"):
        if getattr(s, name) <= 0:
            raise bad(name, "must be a positive number of seconds")
    for name in ("triage_max_retries", "triage_daily_budget_usd", "triage_price_input_per_mtok",
                 "triage_price_output_per_mtok"):
        if getattr(s, name) < 0:
            raise bad(name, "must not be negative")
    for name in ("triage_endpoint", "notify_webhook_url", "notify_dm_service"):
        url = getattr(s, name)
        if url and not url.startswith(("https://", "http://")):
            raise bad(name, f"{url!r} must be an https:// URL")
    if s.notify_webhook_url and not s.notify_webhook_secret:
        raise bad("notify_webhook_secret", "a webhook needs a secret to sign its notices (FIREHOSE_MOD_NOTIFY_WEBHOOK_SECRET)")
    if s.notify_dm_recipients and not (s.notify_dm_handle and s.notify_dm_password):
        raise bad("notify_dm_handle", "DMs need the sending account's handle and app password")
    for did in s.notify_dm_recipients:
        try:
            check_did(did, what="a DM recipient")
        except IdentifierError as exc:
            raise bad("notify_dm_recipients", str(exc)) from None
    if s.transparency_interval < 3600:
        raise bad("transparency_interval", "must be at least 3600 seconds: a summary is a batch, never a post per"
                                           " decision")
    if s.transparency_enabled and not s.transparency_dry_run:
        if s.did == "did:web:localhost":
            raise bad("transparency_enabled", "summaries are posted from the labeler account: set [labeler] did to"
                                              " its DID (or [transparency] dry_run = true)")
        if not (s.labeler_app_password or s.labeler_app_password_file):
            raise bad("transparency_enabled", "posting needs the labeler account's app password: set"
                                              " FIREHOSE_MOD_LABELER_APP_PASSWORD or [labeler] app_password_file"
                                              " (or [transparency] dry_run = true)")
