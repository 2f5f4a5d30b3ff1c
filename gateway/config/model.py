"""The configuration as frozen dataclasses: what the rest of the gateway is given.

Defaults are stated here once; the loader (``gateway.config.load`` and its section modules) reads
them from these classes. Security settings (issuer, audience, algorithms, trusted proxies) have
none. Paths are absolute (resolved against the config file's directory when loaded).
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

# RFC 7518 families python-jose verifies; HS* is excluded on purpose: a gateway verifying tokens
# from an IdP has only public keys, and HS* with a public key is the classic confusion attack.
ASYMMETRIC_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
)


# Default listener ports. Not 9090 (Prometheus), 9093 (Alertmanager), 9100 (node exporter),
# 3000 (Grafana), 8123/9000/9181 (ClickHouse) or 2181 (ZooKeeper): the stack the gateway ships
# with runs beside it, often on the same host.
PROXY_PORT = 8080
ADMIN_PORT = 9470
CONSOLE_PORT = 8090  # the console's own listener (decision 035)
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Secret:
    """A secret value whose repr and JSON form are masked; ``reveal()`` is the only way out."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')" if self._value else "Secret('')"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class ListenerTLS:
    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None  # set: clients must present a certificate it signed


@dataclass(frozen=True)
class UpstreamTLS:
    ca_file: Path | None = None  # None: the system's CAs
    client_cert_file: Path | None = None
    client_key_file: Path | None = None


LOOPBACK: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)


@dataclass(frozen=True)
class Listen:
    host: str = "127.0.0.1"
    port: int = PROXY_PORT  # the admin listener's: ADMIN_PORT
    tls: ListenerTLS | None = None
    # Peers allowed to connect; empty: any. The admin listener defaults to loopback only.
    allow: tuple[IPNetwork, ...] = ()


@dataclass(frozen=True)
class IdentityConfig:
    issuer: str
    audience: str
    algorithms: tuple[str, ...]
    jwks_url: str | None
    jwks_file: Path | None
    clock_skew_seconds: int = 30
    user_claim: str = "sub"
    roles_claim: str = "roles"
    jwks_refresh_min_interval_seconds: float = 30.0
    jwks_cache_seconds: float = 300.0
    token_cache_size: int = 50_000
    # Only honoured when the whole config is marked `demo: true` (see `pd-gateway token`).
    demo_signing_key_file: Path | None = None
    jwks_ca_file: Path | None = None  # verifies an https jwks_url (default: the system's CAs)


@dataclass(frozen=True)
class AuthzConfig:
    model: Path
    policy: Path
    decision_cache_size: int = 100_000
    watch_interval_seconds: float = 2.0  # 0: reload only on SIGHUP
    # Job functions allowed to PUT a new policy through the admin API (empty: API disabled).
    policy_admin_roles: tuple[str, ...] = ()


@dataclass(frozen=True)
class AuditConfig:
    spool_dir: Path
    durability: Literal["fsync", "batch"] = "fsync"
    batch_interval_ms: float = 5.0
    segment_max_bytes: int = 64 * 1024 * 1024
    max_pending: int = 10_000
    # While the store is down the spool absorbs events; past this size `on_spool_full` applies.
    max_spool_bytes: int = 10 * 1024**3
    on_spool_full: Literal["refuse", "alert"] = "refuse"
    # Ed25519 key that signs the chain's checkpoints (docs/decisions/012); required: the store's
    # administrators must not hold it. `pd-gateway audit keygen` makes one.
    checkpoint_key_file: Path = Path()
    checkpoint_interval_seconds: float = 60.0
    # Refusals without a valid token are counted per window (docs/decisions/013).
    anonymous_window_seconds: float = 60.0
    anonymous_max_keys: int = 1000
    # 6.5, 6.6: how often each replica re-reads every subject block from the store; a block made
    # through another replica is enforced here within this bound (plus the shipper's lag).
    blocks_poll_seconds: float = 2.0
    # 5.3: subject ids in the trail as HMAC-SHA256 under this key (docs/decisions/015); the
    # previous keys stay listed while rows or blocks made under them are kept (rotation).
    subject_key_file: Path | None = None
    subject_previous_key_files: tuple[Path, ...] = ()


@dataclass(frozen=True)
class StoreConfig:
    """Where the spool is shipped: `embedded` (chdb in the gateway process) or `clickhouse`."""

    kind: Literal["embedded", "clickhouse"]
    database: str = "pd_audit"
    path: Path | None = None  # embedded: the chdb data directory
    hosts: tuple[tuple[str, int], ...] = ()  # clickhouse: tried in order (failover)
    user: str = "default"
    password: Secret = field(default_factory=lambda: Secret(""))
    secure: bool = False
    ca_file: Path | None = None
    connect_timeout_seconds: float = 5.0
    send_receive_timeout_seconds: float = 30.0
    cluster: str | None = None
    apply_schema: bool = True
    batch_max_rows: int = 5000
    batch_max_age_ms: float = 1000.0
    retry_max_backoff_seconds: float = 30.0


@dataclass(frozen=True)
class Thresholds:
    """Per window, per user: a detection is made when the count is *above* the threshold."""

    bulk_subjects: int = 200  # distinct data subjects read (9.1.6, 10.2: mass copying)
    refusals: int = 20  # requests refused for lack of a rule (probing)
    off_hours: int = 0  # personal-data accesses outside working hours
    exports: int = 0  # export actions
    permission_changes: int = 0  # access-rights changes outside the change windows (9.2.7)
    special_category: int = 0  # special-category reads by someone outside its usual readers


@dataclass(frozen=True)
class AnomaliesConfig:
    """Detectors over the audit store (9.1.6, 9.1.9, 10.2): gateway.governance.anomalies."""

    interval_seconds: float = 60.0  # how often the detectors run
    window_seconds: int = 300  # the windows they judge, aligned to the epoch
    delay_seconds: int = 60  # a window is judged this long after it ends (shipping lag)
    catch_up_windows: int = 12  # windows judged again at start (idempotent)
    timezone: str = "UTC"
    work_days: tuple[int, ...] = (1, 2, 3, 4, 5)  # ISO weekdays
    work_start_minute: int = 8 * 60
    work_end_minute: int = 20 * 60
    change_days: tuple[int, ...] = (1, 2, 3, 4, 5)  # permission changes expected only within
    change_start_minute: int = 9 * 60
    change_end_minute: int = 18 * 60
    thresholds: Mapping[str, Thresholds] = field(
        default_factory=lambda: {"default": Thresholds()}
    )  # by job function; "default" for the rest
    usual_readers: Mapping[str, frozenset[str]] = field(default_factory=dict)  # category → roles


@dataclass(frozen=True)
class ProxyConfig:
    trusted_proxies: tuple[IPNetwork, ...]
    connect_timeout_seconds: float = 5.0
    read_timeout_seconds: float = 60.0
    max_connections: int = 256
    forward_authorization: bool = False
    shutdown_timeout_seconds: float = 30.0
    max_body_bytes: int = 64 * 1024 * 1024  # request bodies, streamed; larger ones get 413
    # Slow and abusive clients (decision 010). A connection must deliver a complete request head
    # within client_header_timeout of opening (or of its previous response); a request body
    # must keep arriving (no gap longer than client_body_timeout).
    client_header_timeout_seconds: float = 15.0
    client_body_timeout_seconds: float = 30.0
    client_max_connections: int = 10_000
    client_max_connections_per_address: int = 256  # peers in trusted_proxies are exempt
    client_max_header_bytes: int = 8190  # one header line, and the request line
    client_max_headers: int = 100
    # Upstream responses: larger or slower ones are cut (502/504, audited).
    upstream_max_response_bytes: int = 1024**3
    upstream_timeout_seconds: float = 300.0  # the whole exchange, body included
    # Request headers never forwarded, beyond proxy.STRIPPED (lower case, `_` read as `-`).
    strip_headers: frozenset[str] = frozenset()
    # WebSockets on routes that declare `websocket: true` (decision 024): a socket with no
    # message either way for the idle limit, or open for the absolute limit, is closed by the
    # gateway; a message larger than the size limit closes it too (1009).
    websocket_idle_timeout_seconds: float = 300.0
    websocket_max_duration_seconds: float = 8 * 3600.0
    websocket_max_message_bytes: int = 4 * 1024 * 1024
    # The host names (`host` or `host:port`, as clients write them) this gateway answers for.
    # Routes pass the client's Host to upstreams by default (decision 022): a request naming any
    # other host is refused (400), so no client can make an upstream build links to its host.
    # Empty: any well-formed Host is accepted (and reaches `host: preserve` upstreams).
    public_hosts: frozenset[str] = frozenset()


@dataclass(frozen=True)
class SessionConfig:
    """Browser sessions (docs/decisions/014-browser-sessions.md)."""

    key_file: Path  # Fernet key: encrypts and authenticates the session and login cookies
    revocation_file: Path  # shared by every replica: users whose sessions end (9.2.7)
    # Defaults fit a system holding personal data: 15 minutes idle, one working day at most.
    idle_timeout_seconds: float = 900.0
    absolute_timeout_seconds: float = 8 * 3600.0
    # A session is re-checked with the provider (refresh token) at least this often: the bound
    # on how long a role change or a revocation at the provider takes to reach the gateway.
    refresh_interval_seconds: float = 300.0
    revocation_poll_seconds: float = 5.0
    login_timeout_seconds: float = 600.0  # from the redirect to the provider to the callback


@dataclass(frozen=True)
class OidcConfig:
    """OIDC authorization-code login at the gateway, as a confidential client (decision 014)."""

    issuer: str  # its discovery document is {issuer}/.well-known/openid-configuration
    client_id: str
    client_secret: Secret
    redirect_uri: str  # {public origin}/_pdgw/callback; its origin is the gateway's origin
    session: SessionConfig
    scopes: tuple[str, ...] = ("openid",)
    ca_file: Path | None = None  # verifies an https issuer (default: the system's CAs)
    # Routes (by name) that accept a browser session; empty: every route. Bearer tokens are
    # accepted everywhere.
    session_routes: frozenset[str] = frozenset()
    secure_cookies: bool = True  # False only without TLS (the demo): cookies lose `Secure`
    home_path: str = "/"  # where "log in again" leads after a logout
    # Ask for `prompt=consent` with `offline_access`: providers that follow OIDC Core §11 issue a
    # refresh token only then. Off: no consent screen at each login; without a refresh token a
    # session is renewed by a silent `prompt=none` login on the next navigation (decision 023).
    consent_for_offline_access: bool = False

    @property
    def origin(self) -> str:
        parts = urlsplit(self.redirect_uri)
        return f"{parts.scheme}://{parts.netloc}"


@dataclass(frozen=True)
class ConsoleConfig:
    """The console for the DPO and investigators (decision 025): server-rendered pages under
    ``path`` on a listener of its own (decision 035: an origin no proxied page shares), behind
    the gateway's browser login, each page view authorised by the policy and recorded (9.2.6)."""

    path: str = "/_pdgw/console/"  # under the gateway's own prefix: never an upstream's path
    listen: Listen = field(default_factory=lambda: Listen(port=CONSOLE_PORT))
    # The console's public origin (scheme://host:port), where browsers reach its listener; empty:
    # the login's origin (oidc.redirect_uri's scheme and host) with the listener's port. The same
    # host as the login's, so the session cookie reaches it; another port, so another origin.
    origin: str = ""
    timezone: str = "UTC"  # times shown and entered, unless the user picks another zone
    page_rows: int = 100  # rows of a table per page (every query is bounded: gateway.audit.query)


@dataclass(frozen=True)
class SubjectRequestsConfig:
    """The register of data subjects' requests and their deadlines (6.3, 6.5, 6.6; decision 029).
    The deadlines themselves are the policy's (30 calendar days, 7 working days), not settings."""

    # The zone the organisation's calendar days are counted in: the date a request was received,
    # its deadline, and whether it was met.
    timezone: str = "Europe/Moscow"
    # Days of the Russian production calendar the `holidays` library does not know yet (a new
    # Government decree moving days off): a YAML file of `days_off:` and `working_days:` dates.
    calendar_file: Path | None = None
    calendar_days_off: frozenset[dt.date] = frozenset()  # read from calendar_file
    calendar_working_days: frozenset[dt.date] = frozenset()  # read from calendar_file
    # An open request counts as due soon from this many calendar days before its deadline.
    due_soon_days: int = 2
    # How often the register is re-read from the store and its deadlines evaluated (the gauges).
    evaluate_seconds: float = 60.0


@dataclass(frozen=True)
class EvidenceConfig:
    """Evidence packs for inspections (9.1.9; decision 028)."""

    # The Ed25519 key that signs packs; unset: the checkpoint key (audit.checkpoint_key_file).
    key_file: Path | None = None
    # The zone a pack's days are counted in (records per day).
    timezone: str = "Europe/Moscow"
    # The Prometheus alert rules deployed beside the gateway (deploy/prometheus/alerts.yml): a
    # pack lists their definitions and the file's hash (9.1.6). Unset: "not configured".
    alert_rules_file: Path | None = None


@dataclass(frozen=True)
class SubjectRule:
    """Where a route's data subject id comes from: a `{param}` segment of a path template and/or a
    query parameter. Recorded in every event so a subject's accesses can be reported (6.1.1)."""

    path_template: str | None = None
    path_index: int | None = None  # index of the `{…}` segment in the split path
    path_literals: tuple[str, ...] = ()  # the template's literal segments before it
    query: str | None = None
    # How the upstream reads the id (decision 034): `auto` refuses any spelling an integer key
    # would read as another number (`01001`, `1001.json`, `1_001`); `integer` takes canonical
    # decimals only; `text` is for string keys the upstream reads exactly as written.
    id: str = "auto"
    # Parameter names under which the upstream also reads this subject from its input (decision
    # 039): Laravel's `$request->id` takes a body's or the query's `id` over the route's, PHP
    # behind a rewrite (`/hr/employees/1001` → `index.php?id=1001`) reads `$_REQUEST['id']`.
    # Refused in the query (400 `subject_in_query`), as a cookie (`subject_in_cookie`) and in a
    # body (`subject_in_body`); the path may then hold no query syntax (`&id=1002`).
    input_names: tuple[str, ...] = ()

    @functools.cached_property
    def body_names(self) -> tuple[str, ...]:
        """The names a request body may not carry on this route: the query subject parameter
        (decision 036) and the input names (decision 039)."""
        return ((self.query,) if self.query else ()) + self.input_names

    @functools.cached_property
    def input_keys(self) -> frozenset[str]:
        """The input names as the loosest framework reads a name (``param_key``): lower case, as
        they are plain names of letters, digits and `_`."""
        return frozenset(n.lower() for n in self.input_names)


@dataclass(frozen=True)
class ResponseSubjects:
    """Where subject ids sit in a route's JSON response (list and search endpoints, 6.1.1): a
    JSON pointer whose ``*`` segments stand for every element of an array, e.g. ``/items/*/id``.
    At most ``max_bytes`` of a response are kept aside to read them (the client is not made to
    wait: the copy is made as the response streams) and at most ``max_subjects`` are recorded;
    past either cap the record says so (``response_capped``)."""

    pointer: tuple[str, ...]
    max_bytes: int = 1024 * 1024
    max_subjects: int = 1000


@dataclass(frozen=True)
class Route:
    name: str
    prefix: str
    upstream: str
    upstream_url: str
    system: str
    category: str
    actions: Mapping[str, str]
    purpose: str = ""
    methods: frozenset[str] | None = None
    subject: SubjectRule | None = None
    # Where the upstream takes an overriding method from ("header", "query"); that method is
    # then what is authorised and recorded (method_override.effective_method, decision 011).
    method_override: frozenset[str] = frozenset()
    response_subjects: ResponseSubjects | None = None
    # The Host the upstream receives: `preserve` the client's (the public name), or `upstream`
    # (its own, from its URL). X-Forwarded-Host/Proto/Port are sent either way (decision 022).
    host: Literal["preserve", "upstream"] = "preserve"
    # WebSocket upgrades are refused unless the route declares them (decision 024).
    websocket: bool = False
    # `Cache-Control: no-store` on the responses of a route with a personal-data category, so a
    # shared computer's cache and Back button keep nothing after logout; `false` leaves the
    # upstream's caching headers as they are (a route of static files, say).
    no_store: bool = True
    # Category `none` only: why the route carries no personal data, as declared by whoever wrote
    # the route; an evidence pack lists it beside the route (9.1.9). Empty: none declared.
    reason: str = ""

    @property
    def carries_personal_data(self) -> bool:
        return self.category != "none"

    @property
    def stores_nothing(self) -> bool:
        """Whether the gateway sets `Cache-Control: no-store` on this route's responses."""
        return self.no_store and self.carries_personal_data


@dataclass(frozen=True)
class Config:
    source: Path
    demo: bool
    instance_id: str
    proxy_listen: Listen
    admin_listen: Listen
    identity: IdentityConfig
    authz: AuthzConfig
    audit: AuditConfig
    proxy: ProxyConfig
    upstreams: Mapping[str, str]
    routes: tuple[Route, ...] = field(default=())
    store: StoreConfig | None = None
    upstream_tls: Mapping[str, UpstreamTLS] = field(default_factory=dict)
    oidc: OidcConfig | None = None  # browser login and sessions (decision 014); None: bearer only
    anomalies: AnomaliesConfig | None = None
    console: ConsoleConfig | None = None  # None: no console
    subject_requests: SubjectRequestsConfig = field(default_factory=SubjectRequestsConfig)
    evidence: EvidenceConfig = field(default_factory=EvidenceConfig)
    # Worker processes that serve requests; a supervisor owns the store (decisions 016, 030).
    workers: int = 1

    @property
    def console_origin(self) -> str:
        """The console's public origin (decision 035), or "" without a console."""
        if self.console is None or self.oidc is None:
            return ""
        return self.console.origin or origin_with_port(self.oidc.origin, self.console.listen.port)

    def to_json(self) -> str:
        """The effective configuration, defaults filled in (like `nginx -T`)."""
        return json.dumps(plain(self), indent=2, sort_keys=False)


DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_with_port(origin: str, port: int | None = None) -> str:
    """``origin`` (scheme://host[:port]) with ``port`` instead (None: its own), in one spelling:
    the host in lower case, the scheme's default port left out."""
    parts = urlsplit(origin)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    default = DEFAULT_PORTS.get(parts.scheme)
    port = port if port is not None else parts.port or default
    return f"{parts.scheme}://{host}" + ("" if port == default else f":{port}")


def plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    if isinstance(value, frozenset):
        return sorted(plain(v) for v in value)
    if isinstance(value, Path | ipaddress.IPv4Network | ipaddress.IPv6Network):
        return str(value)
    if isinstance(value, Secret):
        return "**********" if value.reveal() else ""
    if isinstance(value, dt.date):
        return value.isoformat()
    return value
