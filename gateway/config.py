"""Configuration: frozen dataclasses, loaded once from YAML and validated completely.

Every problem is collected before failing, each with the file, line and key path, so an operator
fixes a config in one pass. Security settings (issuer, audience, algorithms, trusted proxies) have
no silent defaults. Relative paths are resolved against the config file's directory.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import yaml

from gateway import tls
from gateway.errors import ConfigError

# DIGEST 2.2-2.4: the personal-data categories the organisation processes; `none` marks a route
# that carries no personal data. Biometric data is not processed (2.4), so it has no category.
# `audit_log` is the audit trail itself (9.2.6): reading it is an access of its own, granted
# by the policy (gateway.audit_api), never a route's category.
CATEGORIES = ("employee", "employee_health", "counterparty", "site_visitor", "audit_log", "none")
ACTIONS = ("read", "create", "update", "delete", "export", "block")
# 3.2: the purposes of processing. Each route serves one; grants apply within a job function's
# purposes only (4.2: compatible purposes; 4.3: no merging across incompatible ones).
# `audit_control` (9.2.6): control of the lawfulness of processing, the only purpose for which
# the trail is read.
PURPOSES = {
    "hr_records": "3.2.1",
    "contracts": "3.2.2",
    "site_visitors": "3.2.3",
    "audit_control": "9.2.6",
}
# 9.2.6: where reading the audit trail sits in the policy (gateway.audit_api).
AUDIT_SYSTEM = "audit"
AUDIT_CATEGORY = "audit_log"
AUDIT_PURPOSE = "audit_control"
DEFAULT_ACTIONS: Mapping[str, str] = {
    "GET": "read",
    "HEAD": "read",
    "POST": "create",
    "PUT": "update",
    "PATCH": "update",
    "DELETE": "delete",
}
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
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
# Default listener ports. Not 9090 (Prometheus), 9093 (Alertmanager), 9100 (node exporter),
# 3000 (Grafana), 8123/9000/9181 (ClickHouse) or 2181 (ZooKeeper): the stack the gateway ships
# with runs beside it, often on the same host.
PROXY_PORT = 8080
ADMIN_PORT = 9470

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
    host: str
    port: int
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
    """Detectors over the audit store (9.1.6, 9.1.9, 10.2): gateway.anomalies."""

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
    # Slow and abusive clients (issue 5). A connection must deliver a complete request head
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


# The gateway's own paths (login callback, logout); no route may use this prefix.
GATEWAY_PATH_PREFIX = "/_pdgw/"


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
    """OIDC authorization-code login at the gateway, as a confidential client (issue 9)."""

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

    @property
    def origin(self) -> str:
        parts = urlsplit(self.redirect_uri)
        return f"{parts.scheme}://{parts.netloc}"


@dataclass(frozen=True)
class SubjectRule:
    """Where a route's data subject id comes from: a `{param}` segment of a path template and/or a
    query parameter. Recorded in every event so a subject's accesses can be reported (6.1.1)."""

    path_template: str | None = None
    path_index: int | None = None  # index of the `{…}` segment in the split path
    path_literals: tuple[str, ...] = ()  # the template's literal segments before it
    query: str | None = None


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
    # then what is authorised and recorded (routing.effective_method, decision 011).
    method_override: frozenset[str] = frozenset()
    response_subjects: ResponseSubjects | None = None

    @property
    def carries_personal_data(self) -> bool:
        return self.category != "none"


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
    oidc: OidcConfig | None = None  # browser login and sessions (issue 9); None: bearer only
    anomalies: AnomaliesConfig | None = None

    def to_json(self) -> str:
        """The effective configuration, defaults filled in (like `nginx -T`)."""
        return json.dumps(_plain(self), indent=2, sort_keys=False)


def _plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, frozenset):
        return sorted(_plain(v) for v in value)
    if isinstance(value, Path | ipaddress.IPv4Network | ipaddress.IPv6Network):
        return str(value)
    if isinstance(value, Secret):
        return "**********" if value.reveal() else ""
    return value


T = TypeVar("T")
Resolve = Callable[[str | None], Path | None]  # a config value → a path beside the config file


class _Problems:
    def __init__(self, lines: Mapping[str, int]) -> None:
        self.items: list[str] = []
        self._lines = lines

    def add(self, path: str, message: str) -> None:
        line = self._line_of(path)
        where = f"line {line}: " if line else ""
        self.items.append(f"{where}{path}: {message}")

    def _line_of(self, path: str) -> int | None:
        while path:
            if path in self._lines:
                return self._lines[path]
            path = path.rpartition(".")[0] if "." in path else ""
        return None


class _Section:
    """Reads one mapping of the YAML document, recording problems under its key path."""

    def __init__(self, data: Any, path: str, problems: _Problems) -> None:
        self.path = path
        self.problems = problems
        self.seen: set[str] = set()
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            problems.add(path or "(top level)", "must be a mapping")
            data = {}
        self.data: Mapping[str, Any] = data

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def get(
        self,
        name: str,
        kind: type[T] | tuple[type, ...],
        default: Any = ...,
        check: Callable[[Any], str | None] | None = None,
    ) -> Any:
        self.seen.add(name)
        if name not in self.data or self.data[name] is None:
            if default is ...:
                self.problems.add(self.key(name), "is required")
                return None
            return default
        value = self.data[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            names = " or ".join(k.__name__ for k in kinds)
            self.problems.add(self.key(name), f"must be {names}, got {type(value).__name__}")
            return None if default is ... else default
        if check is not None and (message := check(value)) is not None:
            self.problems.add(self.key(name), message)
            return None if default is ... else default
        return value

    def section(self, name: str, required: bool = True) -> _Section:
        self.seen.add(name)
        if required and name not in self.data:
            self.problems.add(self.key(name), "is required")
        return _Section(self.data.get(name), self.key(name), self.problems)

    def finish(self) -> None:
        for name in self.data:
            if name not in self.seen:
                self.problems.add(self.key(str(name)), "unknown key")


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _port(value: int) -> str | None:
    return None if 0 <= value <= 65535 else "must be a port number 0-65535"


def _one_of(choices: tuple[str, ...]) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}"

    return check


def _http_url(value: str) -> str | None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http:// or https:// URL with a host"
    if parts.username or parts.password:
        return "must not carry credentials"
    return None


def _line_index(
    node: yaml.Node, path: str = "", out: dict[str, int] | None = None
) -> dict[str, int]:
    """Map each key path ('routes.2.category') to its 1-based line in the YAML file."""
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = f"{path}.{key_node.value}" if path else str(key_node.value)
            out[key] = key_node.start_mark.line + 1
            _line_index(value_node, key, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            key = f"{path}.{i}" if path else str(i)
            out[key] = item.start_mark.line + 1
            _line_index(item, key, out)
    return out


def load(path: str | Path) -> Config:
    """Read and validate a config file; raise ConfigError listing every problem."""
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError([f"cannot read file: {e.strerror}"], str(source)) from e
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise ConfigError([f"{where}{problem}"], str(source)) from e
    lines = _line_index(node) if node is not None else {}
    return parse(data, source, lines)


def parse(data: Any, source: Path, lines: Mapping[str, int] | None = None) -> Config:
    problems = _Problems(lines or {})
    base = source.parent
    top = _Section(data, "", problems)

    def resolve(p: str | None) -> Path | None:
        return None if p is None else (base / p).resolve()

    demo = top.get("demo", bool, False)
    instance_id = top.get("instance_id", str, socket.gethostname(), _name_check)

    listen = top.section("listen", required=False)
    proxy_listen = _parse_listen(listen.section("proxy", required=False), PROXY_PORT, (), resolve)
    # SECURITY: the admin port defaults to loopback, and only loopback peers may connect;
    # exposing it is an explicit choice (host and allow).
    admin_listen = _parse_listen(
        listen.section("admin", required=False), ADMIN_PORT, LOOPBACK, resolve
    )
    listen.finish()

    ident = top.section("identity")
    algorithms = ident.get("algorithms", list)
    if algorithms is not None:
        if not algorithms:
            problems.add(ident.key("algorithms"), "must name at least one algorithm")
        for i, alg in enumerate(algorithms):
            if alg not in ASYMMETRIC_ALGORITHMS:
                problems.add(
                    f"{ident.key('algorithms')}.{i}",
                    f"{alg!r} is not allowed; use one of {', '.join(ASYMMETRIC_ALGORITHMS)}",
                )
    jwks_url = ident.get("jwks_url", str, None, _http_url)
    jwks_ca_file = _file(ident, "jwks_ca_file", resolve(ident.get("jwks_ca_file", str, None)))
    if jwks_ca_file is not None and jwks_ca_file.is_file():
        _check_tls(ident, "jwks_ca_file", lambda: tls.client_context(jwks_ca_file))
    jwks_file = ident.get("jwks_file", str, None)
    if (jwks_url is None) == (jwks_file is None):
        problems.add(ident.key("jwks_url"), "give exactly one of jwks_url or jwks_file")
    identity = IdentityConfig(
        issuer=ident.get("issuer", str),
        audience=ident.get("audience", str),
        algorithms=tuple(algorithms or ()),
        jwks_url=jwks_url,
        jwks_file=_file(ident, "jwks_file", resolve(jwks_file)),
        clock_skew_seconds=ident.get("clock_skew_seconds", int, 30, _non_negative),
        user_claim=ident.get("user_claim", str, "sub"),
        roles_claim=ident.get("roles_claim", str, "roles"),
        jwks_refresh_min_interval_seconds=ident.get(
            "jwks_refresh_min_interval_seconds", float, 30.0, _positive
        ),
        jwks_cache_seconds=ident.get("jwks_cache_seconds", float, 300.0, _positive),
        token_cache_size=ident.get("token_cache_size", int, 50_000, _positive),
        demo_signing_key_file=_file(
            ident, "demo_signing_key_file", resolve(ident.get("demo_signing_key_file", str, None))
        ),
        jwks_ca_file=jwks_ca_file,
    )
    if identity.demo_signing_key_file is not None and not demo:
        problems.add(
            ident.key("demo_signing_key_file"), "only allowed in a config marked demo: true"
        )
    ident.finish()

    az = top.section("authz")
    authz = AuthzConfig(
        model=_file(az, "model", resolve(az.get("model", str))) or Path(),
        policy=_file(az, "policy", resolve(az.get("policy", str))) or Path(),
        decision_cache_size=az.get("decision_cache_size", int, 100_000, _positive),
        watch_interval_seconds=az.get("watch_interval_seconds", float, 2.0, _non_negative),
        policy_admin_roles=tuple(str(r) for r in az.get("policy_admin_roles", list, [])),
    )
    az.finish()

    au = top.section("audit")
    spool_dir = au.get("spool_dir", str)
    audit = AuditConfig(
        spool_dir=resolve(spool_dir) or Path(),
        durability=au.get("durability", str, "fsync", _one_of(("fsync", "batch"))),
        batch_interval_ms=au.get("batch_interval_ms", float, 5.0, _positive),
        segment_max_bytes=au.get("segment_max_bytes", int, 64 * 1024 * 1024, _min(4096)),
        max_pending=au.get("max_pending", int, 10_000, _positive),
        max_spool_bytes=au.get("max_spool_bytes", int, 10 * 1024**3, _min(64 * 1024)),
        on_spool_full=au.get("on_spool_full", str, "refuse", _one_of(("refuse", "alert"))),
        checkpoint_key_file=resolve(au.get("checkpoint_key_file", str)) or Path(),
        checkpoint_interval_seconds=au.get("checkpoint_interval_seconds", float, 60.0, _positive),
        anonymous_window_seconds=au.get("anonymous_window_seconds", float, 60.0, _positive),
        anonymous_max_keys=au.get("anonymous_max_keys", int, 1000, _positive),
        blocks_poll_seconds=au.get("blocks_poll_seconds", float, 2.0, _positive),
        subject_key_file=resolve(au.get("subject_key_file", str, None)),
        subject_previous_key_files=tuple(
            p
            for p in (resolve(str(v)) for v in au.get("subject_previous_key_files", list, []))
            if p is not None
        ),
    )
    if audit.checkpoint_key_file != Path() and _files(
        au, {"checkpoint_key_file": audit.checkpoint_key_file}
    ):
        _check_signing_key(au, audit.checkpoint_key_file)
    for i, key_file in enumerate(
        [audit.subject_key_file, *audit.subject_previous_key_files]
    ):  # 5.3: a key too short to be secret is refused, not used
        if key_file is None:
            continue
        name = "subject_key_file" if i == 0 else f"subject_previous_key_files[{i - 1}]"
        try:
            if len(key_file.read_bytes().strip()) < 32:
                problems.add(au.key(name), "the key must hold at least 32 bytes")
        except OSError:
            problems.add(au.key(name), f"cannot read {key_file}")
    au.finish()
    store = _parse_store(top, resolve, problems)
    anomalies = _parse_anomalies(top, problems)

    px = top.section("proxy")
    proxy = ProxyConfig(
        trusted_proxies=_networks(px, "trusted_proxies", ...),  # required: [] is a choice
        connect_timeout_seconds=px.get("connect_timeout_seconds", float, 5.0, _positive),
        read_timeout_seconds=px.get("read_timeout_seconds", float, 60.0, _positive),
        max_connections=px.get("max_connections", int, 256, _positive),
        forward_authorization=px.get("forward_authorization", bool, False),
        shutdown_timeout_seconds=px.get("shutdown_timeout_seconds", float, 30.0, _positive),
        max_body_bytes=px.get("max_body_bytes", int, 64 * 1024 * 1024, _min(1)),
        client_header_timeout_seconds=px.get(
            "client_header_timeout_seconds", float, 15.0, _positive
        ),
        client_body_timeout_seconds=px.get("client_body_timeout_seconds", float, 30.0, _positive),
        client_max_connections=px.get("client_max_connections", int, 10_000, _positive),
        client_max_connections_per_address=px.get(
            "client_max_connections_per_address", int, 256, _positive
        ),
        client_max_header_bytes=px.get("client_max_header_bytes", int, 8190, _min(1024)),
        client_max_headers=px.get("client_max_headers", int, 100, _min(8)),
        upstream_max_response_bytes=px.get("upstream_max_response_bytes", int, 1024**3, _min(1)),
        upstream_timeout_seconds=px.get("upstream_timeout_seconds", float, 300.0, _positive),
        strip_headers=_header_names(px, "strip_headers"),
    )
    px.finish()

    up = top.section("upstreams")
    upstreams: dict[str, str] = {}
    upstream_tls: dict[str, UpstreamTLS] = {}
    for name in up.data:
        url, tls_cfg = _parse_upstream(up, str(name), resolve)
        if url is not None:
            upstreams[str(name)] = url.rstrip("/")
        if tls_cfg is not None:
            upstream_tls[str(name)] = tls_cfg
    up.finish()

    routes = _parse_routes(top, upstreams, problems)
    oidc = _parse_oidc(top, resolve, proxy_listen.tls is not None, routes)
    top.finish()
    if problems.items:
        raise ConfigError(problems.items, str(source))
    return Config(
        source=source.resolve(),
        demo=demo,
        instance_id=instance_id,
        proxy_listen=proxy_listen,
        admin_listen=admin_listen,
        identity=identity,
        authz=authz,
        audit=audit,
        proxy=proxy,
        upstreams=upstreams,
        routes=routes,
        store=store,
        upstream_tls=upstream_tls,
        oidc=oidc,
        anomalies=anomalies,
    )


def _parse_oidc(
    top: _Section, resolve: Resolve, tls_on: bool, routes: tuple[Route, ...]
) -> OidcConfig | None:
    """The `oidc` section (browser login) with its `session` subsection; absent: bearer only."""
    if "oidc" not in top.data:
        top.seen.add("oidc")
        return None
    o = top.section("oidc")
    issuer = o.get("issuer", str, ..., _http_url)
    client_id = o.get("client_id", str)
    redirect_uri = o.get("redirect_uri", str, ..., _http_url)
    if redirect_uri is not None:
        parts = urlsplit(redirect_uri)
        if not parts.path.startswith(GATEWAY_PATH_PREFIX) or parts.query or parts.fragment:
            o.problems.add(
                o.key("redirect_uri"), f"must be a path under {GATEWAY_PATH_PREFIX}, no query"
            )
        elif tls_on != (parts.scheme == "https"):
            o.problems.add(o.key("redirect_uri"), "must be https:// exactly when TLS is on")
    secret = ""
    secret_file = _file(o, "client_secret_file", resolve(o.get("client_secret_file", str)))
    if secret_file is not None and secret_file.is_file():
        secret = secret_file.read_text(encoding="utf-8").strip()
        if not secret:
            o.problems.add(o.key("client_secret_file"), "is empty")
    scopes = tuple(str(s) for s in o.get("scopes", list, ["openid"]))
    if "openid" not in scopes:
        o.problems.add(o.key("scopes"), "must include openid")
    home_path = o.get("home_path", str, "/")
    if not home_path.startswith("/") or home_path.startswith("//") or "\\" in home_path:
        o.problems.add(o.key("home_path"), "must be a path on this site, like /hr/")
    names = {r.name for r in routes}
    session_routes = frozenset(str(n) for n in o.get("session_routes", list, []))
    for name in sorted(session_routes - names):
        o.problems.add(o.key("session_routes"), f"no route named {name!r}")
    for r in routes:
        if r.prefix.startswith(GATEWAY_PATH_PREFIX.rstrip("/")):
            o.problems.add(o.key("redirect_uri"), f"route {r.name} uses {GATEWAY_PATH_PREFIX}")
    s = o.section("session")
    key_file = _file(s, "key_file", resolve(s.get("key_file", str)))
    if key_file is not None and key_file.is_file():
        _check_fernet_key(s, key_file)
    revocation = resolve(s.get("revocation_file", str))  # created at the first revocation
    idle = s.get("idle_timeout_seconds", float, 900.0, _positive)
    absolute = s.get("absolute_timeout_seconds", float, 8 * 3600.0, _positive)
    if idle is not None and absolute is not None and idle > absolute:
        s.problems.add(s.key("idle_timeout_seconds"), "must not exceed absolute_timeout_seconds")
    session = SessionConfig(
        key_file=key_file or Path(),
        revocation_file=revocation or Path(),
        idle_timeout_seconds=idle,
        absolute_timeout_seconds=absolute,
        refresh_interval_seconds=s.get("refresh_interval_seconds", float, 300.0, _positive),
        revocation_poll_seconds=s.get("revocation_poll_seconds", float, 5.0, _positive),
        login_timeout_seconds=s.get("login_timeout_seconds", float, 600.0, _positive),
    )
    s.finish()
    cfg = OidcConfig(
        issuer=issuer or "",
        client_id=client_id or "",
        client_secret=Secret(secret),
        redirect_uri=redirect_uri or "",
        session=session,
        scopes=scopes,
        ca_file=_file(o, "ca_file", resolve(o.get("ca_file", str, None))),
        session_routes=session_routes,
        secure_cookies=tls_on,
        home_path=home_path,
    )
    o.finish()
    return cfg


def _check_fernet_key(sec: _Section, path: Path) -> None:
    from cryptography.fernet import Fernet

    try:
        Fernet(path.read_bytes().strip())
    except (OSError, ValueError):
        sec.problems.add(
            sec.key("key_file"),
            f"{path} is not a Fernet key (make one: pd-gateway session keygen --out FILE)",
        )


def _parse_listen(
    sec: _Section, port: int, allow: tuple[IPNetwork, ...], resolve: Resolve
) -> Listen:
    listen = Listen(
        host=sec.get("host", str, "127.0.0.1"),
        port=sec.get("port", int, port, _port),
        tls=_parse_listener_tls(sec, resolve),
        allow=_networks(sec, "allow", list(allow)),
    )
    sec.finish()
    return listen


def _networks(sec: _Section, key: str, default: Any) -> tuple[IPNetwork, ...]:
    """A list of networks; ``default`` ... makes the key required."""
    out: list[IPNetwork] = []
    for i, net in enumerate(sec.get(key, list, default) or ()):
        try:
            out.append(ipaddress.ip_network(str(net), strict=False))
        except ValueError:
            sec.problems.add(f"{sec.key(key)}.{i}", f"{net!r} is not a network")
    return tuple(out)


def _parse_listener_tls(sec: _Section, resolve: Resolve) -> ListenerTLS | None:
    if "tls" not in sec.data:
        sec.seen.add("tls")
        return None
    t = sec.section("tls")
    cert, key = resolve(t.get("cert_file", str)), resolve(t.get("key_file", str))
    client_ca = resolve(t.get("client_ca_file", str, None))
    t.finish()
    if cert is None or key is None:
        return None
    if not _files(t, {"cert_file": cert, "key_file": key, "client_ca_file": client_ca}):
        return ListenerTLS(cert, key, client_ca)
    _check_tls(t, "cert_file", lambda: tls.server_context(cert, key))
    if client_ca is not None:
        _check_tls(t, "client_ca_file", lambda: tls.server_context(cert, key, client_ca))
    return ListenerTLS(cert, key, client_ca)


def _parse_upstream(
    up: _Section, name: str, resolve: Resolve
) -> tuple[str | None, UpstreamTLS | None]:
    """`name: URL`, or `name: {url, ca_file, client_cert_file, client_key_file}` for TLS."""
    if not isinstance(up.data.get(name), Mapping):
        return up.get(name, str, ..., _http_url), None
    u = up.section(name)
    url = u.get("url", str, ..., _http_url)
    ca = resolve(u.get("ca_file", str, None))
    cert = resolve(u.get("client_cert_file", str, None))
    key = resolve(u.get("client_key_file", str, None))
    u.finish()
    if (cert is None) != (key is None):
        u.problems.add(u.key("client_cert_file"), "give client_cert_file and client_key_file")
        return url, None
    if ca is None and cert is None:
        return url, None
    if url is not None and not url.startswith("https://"):
        u.problems.add(u.key("url"), "must be https:// when TLS files are given")
    if not _files(u, {"ca_file": ca, "client_cert_file": cert, "client_key_file": key}):
        return url, UpstreamTLS(ca, cert, key)
    _check_tls(
        u, "ca_file" if ca else "client_cert_file", lambda: tls.client_context(ca, cert, key)
    )
    return url, UpstreamTLS(ca, cert, key)


def _check_signing_key(sec: _Section, path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        key = None
    if not isinstance(key, Ed25519PrivateKey):
        sec.problems.add(
            sec.key("checkpoint_key_file"),
            f"{path} is not a readable Ed25519 private key (make one: pd-gateway audit keygen)",
        )


def _file(sec: _Section, key: str, path: Path | None) -> Path | None:
    """A file the config refers to must exist now: `serve` would otherwise fail later (or never
    become ready) with an error that does not say which key named it."""
    if path is not None and not path.is_file():
        reason = "is a directory, not a file" if path.is_dir() else "file not found"
        sec.problems.add(sec.key(key), f"{reason}: {path}")
    return path


def _files(sec: _Section, paths: Mapping[str, Path | None]) -> bool:
    """Check several referenced files, each under its own key; True when all present exist."""
    for key, path in paths.items():
        _file(sec, key, path)
    return all(p is None or p.is_file() for p in paths.values())


def _check_tls(sec: _Section, key: str, build: Callable[[], object]) -> None:
    """Build the TLS context now, so a bad file is a config problem, not a failure at start."""
    try:
        build()
    except OSError as e:  # ssl.SSLError is an OSError too
        detail = e.strerror or getattr(e, "reason", None) or type(e).__name__
        sec.problems.add(sec.key(key), f"cannot use for TLS: {detail}")


def _parse_store(top: _Section, resolve: Resolve, problems: _Problems) -> StoreConfig | None:
    if "store" not in top.data:
        top.seen.add("store")
        return None
    st = top.section("store")
    kind = st.get("kind", str, ..., _one_of(("embedded", "clickhouse")))
    hosts: list[tuple[str, int]] = []
    for i, h in enumerate(st.get("hosts", list, [])):
        host, _, port = str(h).rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            problems.add(f"{st.key('hosts')}.{i}", f"{h!r} is not host:port")
        else:
            hosts.append((host, int(port)))
    path = resolve(st.get("path", str, None))
    if kind == "embedded" and path is None:
        problems.add(st.key("path"), "is required for kind embedded (the chdb data directory)")
    if kind == "clickhouse" and not hosts:
        problems.add(
            st.key("hosts"), "is required for kind clickhouse (host:port, native protocol)"
        )
    password = ""
    password_file = st.get("password_file", str, None)
    password_env = st.get("password_env", str, None)
    if password_file is not None and password_env is not None:
        problems.add(st.key("password_file"), "give password_file or password_env, not both")
    elif password_file is not None:
        path_of_password = _file(st, "password_file", resolve(password_file)) or Path()
        try:
            if path_of_password.is_file():
                password = path_of_password.read_text().strip()
        except OSError as e:
            problems.add(st.key("password_file"), f"cannot read: {e.strerror}")
    elif password_env is not None:
        if password_env not in os.environ:
            problems.add(st.key("password_env"), f"environment variable {password_env} is not set")
        password = os.environ.get(password_env, "")
    database = st.get("database", str, "pd_audit", _identifier)
    cfg = StoreConfig(
        kind=kind or "embedded",
        database=database,
        path=path,
        hosts=tuple(hosts),
        user=st.get("user", str, "default"),
        password=Secret(password),
        secure=st.get("secure", bool, False),
        ca_file=_file(st, "ca_file", resolve(st.get("ca_file", str, None))),
        connect_timeout_seconds=st.get("connect_timeout_seconds", float, 5.0, _positive),
        send_receive_timeout_seconds=st.get("send_receive_timeout_seconds", float, 30.0, _positive),
        cluster=st.get("cluster", str, None, _identifier),
        apply_schema=st.get("apply_schema", bool, True),
        batch_max_rows=st.get("batch_max_rows", int, 5000, _min(1)),
        batch_max_age_ms=st.get("batch_max_age_ms", float, 1000.0, _positive),
        retry_max_backoff_seconds=st.get("retry_max_backoff_seconds", float, 30.0, _positive),
    )
    st.finish()
    return cfg


def _parse_anomalies(top: _Section, problems: _Problems) -> AnomaliesConfig | None:
    """The `anomalies` section: absent, no detectors run."""
    if "anomalies" not in top.data:
        top.seen.add("anomalies")
        return None
    an = top.section("anomalies")
    tz = an.get("timezone", str, "UTC")
    try:
        zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        problems.add(an.key("timezone"), f"unknown time zone {tz!r}")
        tz = "UTC"
    start, end, days = _hours(an.section("working_hours", required=False), 8 * 60, 20 * 60)
    # 9.2.7: access-rights changes are expected inside agreed change windows only.
    c_start, c_end, c_days = _hours(an.section("change_windows", required=False), 9 * 60, 18 * 60)
    th = an.section("thresholds", required=False)
    base = _thresholds(th.section("default", required=False), Thresholds())
    thresholds = {"default": base}
    for name in th.data:
        if name != "default":
            thresholds[str(name)] = _thresholds(th.section(str(name)), base)
    th.finish()
    ur = an.section("usual_readers", required=False)
    readers: dict[str, frozenset[str]] = {}
    for name in ur.data:
        if name not in CATEGORIES:
            problems.add(ur.key(str(name)), f"not a category: one of {', '.join(CATEGORIES)}")
        roles = ur.get(str(name), list, [])
        if any(not isinstance(r, str) or not re.match(r"^[\w.:-]+$", r) for r in roles):
            problems.add(ur.key(str(name)), "must be a list of job function names")
            roles = []
        readers[str(name)] = frozenset(roles)
    ur.finish()
    cfg = AnomaliesConfig(
        interval_seconds=an.get("interval_seconds", float, 60.0, _positive),
        window_seconds=an.get("window_seconds", int, 300, _min(10)),
        delay_seconds=an.get("delay_seconds", int, 60, _non_negative),
        catch_up_windows=an.get("catch_up_windows", int, 12, _min(1)),
        timezone=tz,
        work_days=days,
        work_start_minute=start,
        work_end_minute=end,
        change_days=c_days,
        change_start_minute=c_start,
        change_end_minute=c_end,
        thresholds=thresholds,
        usual_readers=readers,
    )
    an.finish()
    return cfg


def _hours(sec: _Section, start_default: int, end_default: int) -> tuple[int, int, tuple[int, ...]]:
    """`start`/`end` (HH:MM, local time) and `days` (ISO weekdays) of a weekly window."""
    start = _minute_of_day(sec, "start", f"{start_default // 60:02d}:{start_default % 60:02d}")
    end = _minute_of_day(sec, "end", f"{end_default // 60:02d}:{end_default % 60:02d}")
    if end <= start:
        sec.problems.add(sec.key("end"), "must be after start")
    days = sec.get("days", list, [1, 2, 3, 4, 5])
    if any(not isinstance(d, int) or isinstance(d, bool) or not 1 <= d <= 7 for d in days):
        sec.problems.add(sec.key("days"), "must be ISO weekdays 1 (Monday) to 7 (Sunday)")
        days = [1, 2, 3, 4, 5]
    sec.finish()
    return start, end, tuple(sorted(set(days)))


def _minute_of_day(sec: _Section, key: str, default: str) -> int:
    value = sec.get(key, str, default)
    m = re.match(r"^([01]\d|2[0-4]):([0-5]\d)$", value)
    if m is None or int(m[1]) * 60 + int(m[2]) > 24 * 60:
        sec.problems.add(sec.key(key), "must be HH:MM")
        return 0
    return int(m[1]) * 60 + int(m[2])


def _thresholds(sec: _Section, base: Thresholds) -> Thresholds:
    values = {
        f.name: sec.get(f.name, int, getattr(base, f.name), _non_negative)
        for f in fields(Thresholds)
    }
    sec.finish()
    return Thresholds(**values)


def _identifier(value: str) -> str | None:
    return (
        None if re.match(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$", value) else "must be a plain identifier"
    )


def _parse_routes(
    top: _Section, upstreams: Mapping[str, str], problems: _Problems
) -> tuple[Route, ...]:
    raw = top.get("routes", list)
    routes: list[Route] = []
    names: set[str] = set()
    for i, item in enumerate(raw or ()):
        r = _Section(item, f"routes.{i}", problems)
        name = r.get("name", str, ..., _name_check)
        if name in names:
            problems.add(r.key("name"), f"duplicate route name {name!r}")
        names.add(name)
        prefix = r.get("prefix", str, ..., _prefix_check)
        upstream = r.get("upstream", str)
        if upstream is not None and upstream not in upstreams:
            problems.add(r.key("upstream"), f"no upstream named {upstream!r} under upstreams")
        system = r.get("system", str, ..., _name_check)
        category = r.get("category", str, ..., _one_of(CATEGORIES))
        purpose = r.get("purpose", str, ..., _one_of(tuple(PURPOSES)))
        methods = r.get("methods", list, None)
        method_set = frozenset(str(m).upper() for m in methods) if methods else None

        actions = dict(DEFAULT_ACTIONS)
        declared = r.section("actions", required=False)
        for method in declared.data:
            act = declared.get(str(method), str, ..., _one_of(ACTIONS))
            if act is not None:
                actions[str(method).upper()] = act
        declared.finish()
        if method_set is not None:
            for m in sorted(method_set - set(actions)):
                problems.add(
                    r.key("methods"), f"method {m} has no action; declare it under actions"
                )
            actions = {m: a for m, a in actions.items() if m in method_set}

        subject = _parse_subject(r, prefix)
        listed = _parse_response_subjects(r)
        override = r.get("method_override", list, [])
        for carrier in override:
            if carrier in ("form", "json"):
                problems.add(
                    r.key("method_override"),
                    f"{carrier!r} cannot be declared: the gateway authorises before it reads "
                    "the body, so a body override is always refused (decision 011)",
                )
            elif carrier not in ("header", "query"):
                problems.add(r.key("method_override"), "must list 'header' and/or 'query'")
        r.finish()
        routes.append(
            Route(
                name=name,
                prefix=prefix or "/",
                upstream=upstream or "",
                upstream_url=upstreams.get(upstream or "", ""),
                system=system,
                category=category,
                actions=actions,
                purpose=purpose or "",
                methods=method_set,
                subject=subject,
                method_override=frozenset(str(c) for c in override) & {"header", "query"},
                response_subjects=listed,
            )
        )
    _check_overlapping_prefixes(routes, problems)
    return tuple(routes)


def _parse_response_subjects(r: _Section) -> ResponseSubjects | None:
    if "response_subjects" not in r.data:
        return None
    sec = r.section("response_subjects")
    pointer = sec.get("pointer", str, ..., _pointer_check)
    found = ResponseSubjects(
        pointer=tuple(
            p.replace("~1", "/").replace("~0", "~") for p in (pointer or "/").split("/")[1:]
        ),
        max_bytes=sec.get("max_bytes", int, 1024 * 1024, _min(1024)),
        max_subjects=sec.get("max_subjects", int, 1000, _positive),
    )
    sec.finish()
    return found


def _pointer_check(value: str) -> str | None:
    if not value.startswith("/") or value == "/":
        return "a JSON pointer into the response, e.g. /items/*/id"
    return None


def _check_overlapping_prefixes(routes: list[Route], problems: _Problems) -> None:
    """Two routes whose prefixes differ only in case (and share a method) could not be told apart
    by a case-insensitive upstream; the router refuses such requests, so refuse such a table."""
    seen: dict[str, list[tuple[int, Route]]] = {}
    for i, route in enumerate(routes):
        key = route.prefix.rstrip("/").lower()
        for j, other in seen.get(key, []):
            if route.methods is None or other.methods is None or route.methods & other.methods:
                problems.add(
                    f"routes.{i}.prefix",
                    f"{route.prefix!r} overlaps routes.{j} ({other.prefix!r}) for the same "
                    "methods (prefixes are compared without regard to case)",
                )
        seen.setdefault(key, []).append((i, route))


def _parse_subject(r: _Section, prefix: str | None) -> SubjectRule | None:
    if "subject" not in r.data:
        r.seen.add("subject")
        return None
    s = r.section("subject")
    template = s.get("path", str, None)
    query = s.get("query", str, None)
    index = None
    literals: tuple[str, ...] = ()
    if template is not None:
        segments = template.split("/")
        params = [i for i, seg in enumerate(segments) if seg.startswith("{") and seg.endswith("}")]
        if len(params) != 1:
            s.problems.add(s.key("path"), "must contain exactly one {param} segment")
        elif prefix and not template.startswith(prefix.rstrip("/") + "/"):
            s.problems.add(s.key("path"), f"must start with the route prefix {prefix}")
        else:
            index = params[0]
            literals = tuple(segments[:index])
    if template is None and query is None:
        s.problems.add(s.path, "give path and/or query")
    s.finish()
    return SubjectRule(
        path_template=template, path_index=index, path_literals=literals, query=query
    )


_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 9110 §5.6.2 token


def _header_names(sec: _Section, key: str) -> frozenset[str]:
    names = sec.get(key, list, [])
    out = set()
    for i, name in enumerate(names):
        if not isinstance(name, str) or not _HEADER_NAME.match(name):
            sec.problems.add(f"{sec.key(key)}.{i}", "must be a header name")
            continue
        out.add(name.lower().replace("_", "-"))
    return frozenset(out)


def _name_check(value: str) -> str | None:
    return None if _NAME.match(value) else "must be lower-case letters, digits, '_' or '-'"


def _prefix_check(value: str) -> str | None:
    if not value.startswith("/"):
        return "must start with /"
    if "//" in value or "/./" in value or "/../" in value or "%" in value or "\\" in value:
        return "must be a plain decoded path without '//', dot segments, '%' or '\\'"
    if ";" in value or any(s.endswith((".", " ")) for s in value.rstrip("/").split("/")[1:]):
        return "must not contain ';' or a segment ending in '.' or ' ' (such paths are refused)"
    return None


def _non_negative(value: int) -> str | None:
    return None if value >= 0 else "must be 0 or greater"


def _min(n: int) -> Callable[[int], str | None]:
    def check(value: int) -> str | None:
        return None if value >= n else f"must be at least {n}"

    return check


__all__ = ["ACTIONS", "CATEGORIES", "Config", "Route", "load", "parse"]
