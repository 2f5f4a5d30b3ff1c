"""Proxying: header hygiene, X-Forwarded-*, exact paths, streaming, audited upstream failures."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import time

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.runtime.app import GATEWAY
from tests.conftest import (
    GatewayFactory,
    Gw,
    HandlerUpstream,
    Keys,
    Upstream,
    chained_seqs,
    raw_request,
    spool_events,
    spool_records,
)


def auth(
    keys: Keys, sub: str = "alice", roles: tuple[str, ...] = ("hr_officer",)
) -> dict[str, str]:
    return {"Authorization": f"Bearer {keys.token(sub, list(roles))}"}


async def test_hop_by_hop_and_connection_listed_headers_are_not_forwarded(
    gw: Gw, upstream: Upstream, keys: Keys
) -> None:
    headers = {
        **auth(keys),
        "Connection": "keep-alive, X-Hop-Secret",
        "X-Hop-Secret": "must-not-pass",
        "Keep-Alive": "timeout=5",
        "TE": "trailers",
        "Proxy-Authorization": "Basic Zm9vOmJhcg==",
        "Proxy-Connection": "keep-alive",
        "X-Kept": "yes",
    }
    resp = await gw.client.get("/hr/employees/1001", headers=headers)
    assert resp.status == 200
    seen = upstream.seen[-1].headers
    for name in ("x-hop-secret", "keep-alive", "te", "proxy-authorization", "proxy-connection"):
        assert name not in seen, name
    assert seen["x-kept"] == ["yes"]


async def test_spoofed_identity_headers_are_replaced_by_the_gateways_own(
    gw: Gw, upstream: Upstream, keys: Keys
) -> None:
    headers = {
        **auth(keys, "alice", ("hr_officer",)),
        "X-PD-User": "mallory",
        "x-pd-roles": "dpo",
        "X-Pd-Anything": "injected",
        "X-Request-Id": "attacker-chosen",
    }
    resp = await gw.client.get("/hr/employees/1001", headers=headers)
    assert resp.status == 200
    seen = upstream.seen[-1].headers
    assert seen["x-pd-user"] == ["alice"]
    assert seen["x-pd-roles"] == ["hr_officer"]
    assert "x-pd-anything" not in seen
    assert seen["x-request-id"] == [resp.headers["X-Request-Id"]]
    assert resp.headers["X-Request-Id"] != "attacker-chosen"
    # The bearer token is not handed to the upstream unless configured.
    assert "authorization" not in seen


async def test_forwarded_headers_from_an_untrusted_peer_are_replaced(
    gw: Gw, upstream: Upstream, keys: Keys
) -> None:
    headers = {
        **auth(keys),
        "X-Forwarded-For": "203.0.113.9",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "evil.example",
        "Forwarded": "for=203.0.113.9",
    }
    assert (await gw.client.get("/hr/employees/1001", headers=headers)).status == 200
    seen = upstream.seen[-1].headers
    assert seen["x-forwarded-for"] == ["127.0.0.1"]
    assert seen["x-forwarded-proto"] == ["http"]
    assert seen["x-forwarded-host"] != ["evil.example"]
    assert "forwarded" not in seen
    assert spool_events(gw.spool_dir)[-1]["client_ip"] == "127.0.0.1"


async def test_forwarded_for_from_a_trusted_proxy_is_extended_and_names_the_client(
    make_gateway: GatewayFactory, upstream: Upstream, keys: Keys
) -> None:
    gw = await make_gateway(upstream.url, proxy={"trusted_proxies": ["127.0.0.0/8"]})
    headers = {**auth(keys), "X-Forwarded-For": "198.51.100.7", "X-Forwarded-Proto": "https"}
    assert (await gw.client.get("/hr/employees/1001", headers=headers)).status == 200
    seen = upstream.seen[-1].headers
    assert seen["x-forwarded-for"] == ["198.51.100.7, 127.0.0.1"]
    assert seen["x-forwarded-proto"] == ["https"]
    assert spool_events(gw.spool_dir)[-1]["client_ip"] == "198.51.100.7"


async def test_query_string_reaches_the_upstream_byte_for_byte(
    gw: Gw, upstream: Upstream, keys: Keys
) -> None:
    raw = "/site/leads?lead_id=l-1&x=%41%2f%2F&y=a+b&&z=%D0%B8&empty="
    resp = await raw_request(gw, "GET", raw, auth(keys, "s", ("sales_manager",)))
    assert resp.status == 200
    assert upstream.seen[-1].raw_path == raw
    assert spool_events(gw.spool_dir)[-1]["subject_ids"] == ["l-1"]
    # The audit event keeps the path, not the query string (5.3: as little personal data as it can).
    assert spool_events(gw.spool_dir)[-1]["path"] == "/site/leads"


async def test_request_body_streams_to_the_upstream_intact(
    gw: Gw, upstream: Upstream, keys: Keys
) -> None:
    size = 8 * 1024 * 1024

    async def body():  # type: ignore[no-untyped-def]
        chunk = b"x" * 65536
        for _ in range(size // len(chunk)):
            yield chunk

    resp = await gw.client.post("/hr/employees", data=body(), headers=auth(keys))
    assert resp.status == 200
    assert (await resp.json())["bytes"] == size
    (event,) = spool_events(gw.spool_dir)
    assert event["bytes_in"] == size and event["outcome"] == "complete"


async def test_every_request_to_a_pd_route_is_exactly_one_access_decision_then_outcome(
    gw: Gw, keys: Keys
) -> None:
    hr, acc = auth(keys), auth(keys, "bob", ("accountant",))
    plan = [
        ("GET", "/hr/employees/1001", hr, 200),
        ("GET", "/hr/medical/7", acc, 403),
        ("GET", "/hr/employees", {}, 401),
        ("DELETE", "/hr/employees/1001", hr, 200),
    ] * 10
    for method, path, headers, status in plan:
        assert (await gw.client.request(method, path, headers=headers)).status == status
    records = spool_records(gw.spool_dir)
    accesses = [r for r in records if r["kind"] == "access"]
    outcomes = [r for r in records if r["kind"] == "outcome"]
    attributed = [p for p in plan if p[2]]  # the 401s are counted, not recorded (013)
    assert len(accesses) == len(attributed)
    # Every record that took a number is in the spool: 1..N, no holes.
    assert chained_seqs(gw.spool_dir) == list(range(1, len(accesses) + len(outcomes) + 1))
    allowed = [a for a in accesses if a["decision"] == "allow"]
    assert all(a["outcome"] == "pending" for a in allowed)  # decision written before forwarding
    assert sorted(o["event_id"] for o in outcomes) == sorted(a["event_id"] for a in allowed)
    for a in allowed:  # each outcome comes after its own decision
        assert records.index(a) < next(
            i
            for i, r in enumerate(records)
            if r["kind"] == "outcome" and r["event_id"] == a["event_id"]
        )
    events = spool_events(gw.spool_dir)
    assert [e["status"] for e in events] == [s for *_, s in attributed]
    assert all(e["outcome"] == "complete" for e in events)


async def test_the_records_of_a_request_hold_every_field_as_it_happened(gw: Gw, keys: Keys) -> None:
    """The request path builds its access and outcome records positionally (keywords cost it):
    every field of each is checked here by name, for an allowed and for a refused request."""
    version = gw.client.app[GATEWAY].policies.engine.version
    before = time.time_ns() // 1000
    ok = await gw.client.get("/hr/employees/1001?page=2", headers=auth(keys))
    no = await gw.client.get("/hr/medical/7", headers=auth(keys, "bob", ("accountant",)))
    after = time.time_ns() // 1000
    assert (ok.status, no.status) == (200, 403)
    access, outcome, refusal = [
        {k: v for k, v in r.items() if k not in ("hash", "seq", "instance", "v")}
        for r in spool_records(gw.spool_dir)
        if r["kind"] in ("access", "outcome")
    ]
    assert outcome.pop("event_id") == access["event_id"]
    for record in (access, refusal):
        assert re.fullmatch(r"[0-9a-f]{32}", record.pop("event_id"))
        assert before <= record.pop("ts_us") <= after
    assert outcome.pop("duration_us") >= outcome.pop("upstream_us") > 0
    assert refusal.pop("duration_us") > 0
    common = {
        "kind": "access",
        "client_ip": "127.0.0.1",
        "auth": "bearer",
        "session": "",
        "method": "GET",
        "system": "hr",
        "purpose": "hr_records",
        "action": "read",
        "policy_version": version,
        "bytes_in": 0,
        "bytes_out": 0,
        "upstream_us": 0,
    }
    assert access == {
        **common,
        "request_id": ok.headers["X-Request-Id"],
        "route": "hr-employees",
        "category": "employee",
        "user": "alice",
        "roles": ["hr_officer"],
        "path": "/hr/employees/1001",
        "query": "page=2",
        "subject_ids": ["1001"],
        "decision": "allow",
        "reason": "rule",
        "rule": "p, hr_officer, hr, employee, read",
        "status": 0,
        "duration_us": 0,
        "outcome": "pending",
    }
    assert refusal == {
        **common,
        "request_id": no.headers["X-Request-Id"],
        "route": "hr-medical",
        "category": "employee_health",
        "user": "bob",
        "roles": ["accountant"],
        "path": "/hr/medical/7",
        "query": "",
        "subject_ids": ["7"],
        "decision": "deny",
        "reason": "no_matching_rule",
        "rule": "",
        "status": 403,
        "outcome": "complete",
    }
    assert outcome == {
        "kind": "outcome",
        "status": 200,
        "bytes_in": 0,
        "bytes_out": len(await ok.read()),
        "outcome": "complete",
        "response_subjects": [],
        "response_count": 0,
        "response_capped": 0,
    }


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


async def test_upstream_down_is_502_and_audited(make_gateway: GatewayFactory, keys: Keys) -> None:
    gw = await make_gateway(f"http://127.0.0.1:{_closed_port()}")
    resp = await gw.client.get("/hr/employees/1001", headers=auth(keys))
    assert resp.status == 502
    body = await resp.json()
    assert body["request_id"] == resp.headers["X-Request-Id"]
    (event,) = spool_events(gw.spool_dir)
    assert (event["decision"], event["status"], event["outcome"]) == (
        "allow",
        502,
        "upstream_unreachable",
    )
    assert (
        gw.metric(
            "pdgw_upstream_errors_total", {"route": "hr-employees", "kind": "upstream_unreachable"}
        )
        == 1
    )


async def test_upstream_timeout_is_504_and_audited(
    make_gateway: GatewayFactory, keys: Keys, upstream_serving: HandlerUpstream
) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(2)
        return web.Response(text="late")

    url = await upstream_serving(slow)
    gw = await make_gateway(url, proxy={"read_timeout_seconds": 0.3})
    resp = await gw.client.get("/hr/employees/1001", headers=auth(keys))
    assert resp.status == 504
    (event,) = spool_events(gw.spool_dir)
    assert (event["status"], event["outcome"]) == (504, "upstream_timeout")


@pytest.mark.parametrize(
    ("length", "head_waits"),
    [
        (5, True),  # small, known length: one write, head and body together
        (None, False),  # a stream (chunked): the head at once, as for server-sent events
        (64 * 1024 + 1, False),  # larger than SMALL_RESPONSE_BYTES: the head at once
    ],
    ids=["small", "stream", "large"],
)
async def test_a_small_response_goes_out_in_one_write_and_a_stream_gets_its_head_at_once(
    make_gateway: GatewayFactory,
    keys: Keys,
    upstream_serving: HandlerUpstream,
    length: int | None,
    head_waits: bool,
) -> None:
    """The upstream sends its head, then its body a second later: what the client sees when.
    A small body of known length waits for its head (one system call instead of two per
    response, docs/benchmarks.md); a stream or a large body never holds its head back."""
    pause = 1.0

    async def late_body(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()  # aiohttp's server sends this head at prepare()
        if length is not None:
            resp.content_length = length
        await resp.prepare(request)
        await asyncio.sleep(pause)
        await resp.write(b"x" * (length or 5))
        await resp.write_eof()
        return resp

    url = await upstream_serving(late_body)
    gw = await make_gateway(url)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    async with gw.client.get("/hr/employees/1001", headers=auth(keys)) as resp:
        head_after = loop.time() - t0
        body = await resp.read()
    assert resp.status == 200 and body == b"x" * (length or 5)
    if head_waits:
        assert head_after >= pause * 0.9, head_after
    else:
        assert head_after < pause * 0.9, head_after


@pytest.mark.parametrize(("method", "status"), [("HEAD", 200), ("GET", 204), ("GET", 304)])
async def test_a_bodiless_answer_is_sent_only_once_its_outcome_is_recorded(
    make_gateway: GatewayFactory,
    keys: Keys,
    upstream_serving: HandlerUpstream,
    method: str,
    status: int,
) -> None:
    """A head with no body (HEAD, 204, 304) is the whole response: were it sent before the
    outcome record, a failed write would leave the client with an answer whose outcome is lost
    (9.1.8). The spool's disk fills while the upstream answers: a real ENOSPC from the kernel
    (its segment is made to write to /dev/full), so the outcome cannot be written."""
    spool = None

    async def answer(request: web.Request) -> web.StreamResponse:
        assert spool is not None
        full = os.open("/dev/full", os.O_WRONLY)
        os.dup2(full, spool._fd)  # the access record is written; the outcome will fail
        os.close(full)
        return web.Response(status=status, headers={"ETag": '"v1"'})

    gw = await make_gateway(await upstream_serving(answer))
    spool = gw.client.app[GATEWAY].spool
    async with gw.client.request(method, "/hr/employees/1001", headers=auth(keys)) as resp:
        assert resp.status == 503
        if method != "HEAD":  # an answer to HEAD has no body
            assert (await resp.json())["error"] == "audit_unavailable"
    (access,) = [e for e in spool_events(gw.spool_dir) if e["route"] == "hr-employees"]
    assert access["outcome"] == "unknown"  # the access on record; its outcome never written


async def test_response_hop_by_hop_headers_are_dropped_and_body_streams_back(
    make_gateway: GatewayFactory, keys: Keys, upstream_serving: HandlerUpstream
) -> None:
    chunks = [b"a" * 1000, b"b" * 1000, b"c" * 10]

    async def streaming(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={"Connection": "X-Up-Secret", "X-Up-Secret": "1", "X-Up-Kept": "1"}
        )
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for c in chunks:
            await resp.write(c)
            await asyncio.sleep(0.01)
        await resp.write_eof()
        return resp

    url = await upstream_serving(streaming)
    gw = await make_gateway(url)
    resp = await gw.client.get("/hr/employees/1001", headers=auth(keys))
    assert resp.status == 200
    assert await resp.read() == b"".join(chunks)
    assert "X-Up-Secret" not in resp.headers and resp.headers["X-Up-Kept"] == "1"
    (event,) = spool_events(gw.spool_dir)
    assert event["bytes_out"] == sum(map(len, chunks))


def test_header_names_compare_without_case_in_multidicts_set_operations() -> None:
    """The response's hop-by-hop headers are taken out by set operations on its names
    (gateway/forwarding/headers.py): multidict ≥ 6.3 ignores case there, as HTTP does; an older
    one would forward `Transfer-Encoding` spelt in another case."""
    names = CIMultiDictProxy(CIMultiDict([("Transfer-Encoding", "chunked"), ("LOCATION", "/x")]))
    assert names.keys() & frozenset({"transfer-encoding"}) == {"Transfer-Encoding"}
    assert not names.keys().isdisjoint(frozenset({"location"}))


async def test_a_connection_listed_response_header_is_dropped_whatever_its_case_or_separator(
    make_gateway: GatewayFactory, keys: Keys, upstream_serving: HandlerUpstream
) -> None:
    """RFC 9110 §7.6.1: a name the upstream's `Connection` lists is this hop's only. Matched
    without case (the usual response: set operations on the names), and — once some name is
    spelt with `_` or `.` — as CGI-style servers read names (decision 011)."""

    async def answer(request: web.Request) -> web.Response:
        headers = CIMultiDict(
            [
                ("Connection", "X-Up-Secret, keep-alive"),
                ("x-UP-secret", "1"),
                ("Keep-Alive", "timeout=5"),
                ("X-Up-Kept", "1"),
                ("X-Request-Id", "the upstream's"),
                ("Location", "/hr/employees/1002"),
            ]
        )
        if request.query.get("odd"):
            headers.add("X_Up_Secret", "2")
        return web.Response(body=b"ok", headers=headers)

    gw = await make_gateway(await upstream_serving(answer))
    for path in ("/hr/employees/1001", "/hr/employees/1001?odd=1"):
        resp = await gw.client.get(path, headers=auth(keys))
        assert resp.status == 200 and await resp.read() == b"ok"
        names = [name.decode().lower().replace("_", "-") for name, _ in resp.raw_headers]
        assert "x-up-secret" not in names and "keep-alive" not in names, path
        assert names.count("x-request-id") == 1 and resp.headers["X-Request-Id"] != "the upstream's"
        assert resp.headers["X-Up-Kept"] == "1" and resp.headers["Location"] == "/hr/employees/1002"


async def test_unknown_path_is_404_with_request_id(gw: Gw, keys: Keys) -> None:
    resp = await gw.client.get("/payroll/secret", headers=auth(keys))
    assert resp.status == 404
    assert (await resp.json())["request_id"] == resp.headers["X-Request-Id"]


async def test_a_request_target_that_is_no_path_is_refused_by_the_pipeline_and_recorded(
    gw: Gw, upstream: Upstream, keys: Keys
) -> None:
    """`OPTIONS *` matches no path pattern: the proxy app's last route takes every target, so the
    pipeline refuses it (400, a request id, recorded with the person) where aiohttp's router
    would answer a text 404 of its own. `CONNECT host:port` has no path at all and never
    reaches a route, nor does an absolute-form target without one: the router's 404, and nothing
    reaches an upstream (decision 037)."""
    url = gw.client.make_url("")

    async def send(line: str) -> bytes:
        reader, writer = await asyncio.open_connection(url.host, url.port)
        token = keys.token("alice", ["hr_officer"])
        writer.write(
            f"{line}\r\nHost: {url.host}:{url.port}\r\nAuthorization: Bearer {token}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        data = await reader.read()
        writer.close()
        return data

    head, _, body = (await send("OPTIONS * HTTP/1.1")).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    request_id = json.loads(body)["request_id"]
    assert f"X-Request-Id: {request_id}".encode() in head
    (event,) = spool_events(gw.spool_dir)
    assert (event["request_id"], event["user"], event["path"]) == (request_id, "alice", "*")
    assert (event["status"], event["reason"]) == (400, "path_not_absolute")
    for no_path in (
        "CONNECT hr.internal:443 HTTP/1.1",
        f"GET http://{url.host}:{url.port} HTTP/1.1",
    ):
        assert (await send(no_path)).startswith(b"HTTP/1.1 404 "), no_path
    assert upstream.seen == [] and len(spool_events(gw.spool_dir)) == 1


async def test_method_without_an_action_is_405_and_audited(gw: Gw, keys: Keys) -> None:
    resp = await gw.client.request("OPTIONS", "/hr/employees", headers=auth(keys))
    assert resp.status == 405
    (event,) = spool_events(gw.spool_dir)
    assert (event["decision"], event["reason"]) == ("deny", "method_not_allowed")


async def test_ambiguous_paths_are_refused_before_routing(
    gw: Gw, upstream: Upstream, keys: Keys
) -> None:
    for raw in (
        "/hr/employees/../medical/1",
        "/hr/employees/%2e%2e/x",
        "/hr%2femployees",
        "/hr//employees",
        "/hr/employees/%00",
        "/hr/employees/%c0%ae%c0%ae",
        "/hr/employees/..;/medical/1",
        "/hr/medical./1",
        "/HR/medical/1",
    ):
        resp = await raw_request(gw, "GET", raw, auth(keys))
        assert resp.status == 400, raw
        assert (await resp.json())["request_id"] == resp.headers["X-Request-Id"]
    assert upstream.seen == []
    # Refused before routing: nothing to audit, but counted by reason for alerting.
    assert (
        gw.metric("pdgw_requests_total", {"route": "-", "decision": "deny", "status": "400"}) == 9
    )
    assert gw.metric("pdgw_denials_total", {"route": "-", "reason": "case_ambiguous"}) == 1


@pytest.mark.parametrize("length", [1_000_000, 4096], ids=["streamed", "small"])
async def test_upstream_dying_mid_response_is_never_a_whole_answer_and_is_audited(
    make_gateway: GatewayFactory, keys: Keys, upstream_serving: HandlerUpstream, length: int
) -> None:
    """A large body streams, so the client is cut off mid-body; a small one is read whole before
    anything is sent (decision 032), so the client gets a 502 with the request id."""

    async def dies(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_length = length
        await resp.prepare(request)
        await resp.write(b"partial" * 100)
        assert request.transport is not None
        request.transport.close()  # the upstream crashes before sending the rest
        return resp

    url = await upstream_serving(dies)
    gw = await make_gateway(url)
    resp = await gw.client.get("/hr/employees/1001", headers=auth(keys))
    if length > 64 * 1024:
        assert resp.status == 200  # the headers had already gone out
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()  # but the client can tell the body is incomplete
    else:
        assert resp.status == 502
        assert (await resp.json())["request_id"] == resp.headers["X-Request-Id"]
    (event,) = spool_events(gw.spool_dir)
    assert event["outcome"] == "upstream_aborted"
    if length > 64 * 1024:
        assert event["bytes_out"] < length
    else:
        assert (event["status"], event["bytes_out"]) == (502, 0)


async def test_a_fault_after_the_decision_is_a_500_with_its_outcome_on_record(
    gw: Gw, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection (a deliberate bug in the forwarder): the access stays on record with
    outcome gateway_error instead of unknown, and the client gets a generic 500."""
    from gateway.forwarding.forwarder import Forwarder

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("injected fault")

    monkeypatch.setattr(Forwarder, "_relay", broken)
    resp = await gw.client.get("/hr/employees/1001", headers=auth(keys))
    assert resp.status == 500
    body = await resp.json()
    assert body == {
        "error": "internal_error",
        "message": "internal error",
        "request_id": resp.headers["X-Request-Id"],
    }
    (event,) = spool_events(gw.spool_dir)
    assert (event["decision"], event["outcome"], event["status"]) == ("allow", "gateway_error", 500)


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("gateway.identity.tokens.TokenVerifier.verify", "identity_error"),
        ("gateway.policy.engine.PolicyEngine.decide", "authz_error"),
        ("gateway.web.pipeline.subject_ids", "subject_error"),
    ],
)
async def test_a_fault_inside_identity_authz_or_subject_extraction_denies_and_is_audited(
    gw: Gw,
    upstream: Upstream,
    keys: Keys,
    monkeypatch: pytest.MonkeyPatch,
    target: str,
    reason: str,
) -> None:
    """Fault injection: each step raising an unexpected error fails closed (500, not forwarded)
    and the denial is in the audit trail with the step that failed."""

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("injected fault")

    async def broken_async(*args: object, **kwargs: object) -> None:
        raise RuntimeError("injected fault")

    monkeypatch.setattr(target, broken_async if target.endswith("verify") else broken)
    resp = await gw.client.get("/hr/employees/1001", headers=auth(keys))
    assert resp.status == 500
    assert (await resp.json())["message"] == "internal error"
    assert upstream.seen == []
    (event,) = spool_events(gw.spool_dir)
    assert (event["decision"], event["reason"], event["status"]) == ("deny", reason, 500)
    assert gw.metric("pdgw_denials_total", {"route": "hr-employees", "reason": reason}) == 1


async def test_a_fault_inside_the_audit_step_refuses_the_request_and_counts_it(
    gw: Gw, upstream: Upstream, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection in the audit step itself: the request is refused (503) and never
    forwarded. The denial cannot be in the spool that just failed; the metric and the error
    log are its record (and `pdgw_denials_total{reason="audit_unavailable"}` is alerted on)."""
    from gateway.audit.spool import Spool

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("injected fault")

    monkeypatch.setattr(Spool, "append", broken)
    resp = await gw.client.get("/hr/employees/1001", headers=auth(keys))
    assert resp.status == 503
    assert (await resp.json())["error"] == "audit_unavailable"
    assert upstream.seen == []
    labels = {"route": "hr-employees", "reason": "audit_unavailable"}
    assert gw.metric("pdgw_denials_total", labels) == 1


async def test_a_declared_body_over_the_limit_is_413_audited_and_never_sent(
    make_gateway: GatewayFactory, upstream: Upstream, keys: Keys
) -> None:
    gw = await make_gateway(upstream.url, proxy={"max_body_bytes": 1000})
    resp = await gw.client.post("/hr/employees", data=b"x" * 1001, headers=auth(keys))
    assert resp.status == 413
    assert (await resp.json())["error"] == "too_large"
    assert upstream.seen == []
    (event,) = spool_events(gw.spool_dir)
    assert (event["decision"], event["status"], event["outcome"]) == (
        "allow",
        413,
        "body_too_large",
    )


async def test_a_streamed_body_growing_past_the_limit_is_cut_and_413(
    make_gateway: GatewayFactory, upstream: Upstream, keys: Keys
) -> None:
    gw = await make_gateway(upstream.url, proxy={"max_body_bytes": 100_000})

    async def chunked():  # type: ignore[no-untyped-def]
        for _ in range(50):
            yield b"y" * 10_000

    resp = await gw.client.post("/hr/employees", data=chunked(), headers=auth(keys))
    assert resp.status == 413
    assert upstream.seen == []  # the upstream never got a complete request
    (event,) = spool_events(gw.spool_dir)
    assert (event["status"], event["outcome"]) == (413, "body_too_large")
    assert event["bytes_in"] > 100_000


async def test_an_upstream_response_over_the_size_limit_is_cut_and_audited(
    make_gateway: GatewayFactory, keys: Keys, upstream_serving: HandlerUpstream
) -> None:
    async def big(request: web.Request) -> web.StreamResponse:
        if request.path.endswith("/declared"):
            return web.Response(body=b"d" * 5000)
        resp = web.StreamResponse()  # chunked: the size shows only while streaming
        await resp.prepare(request)
        for _ in range(5):
            await resp.write(b"c" * 1000)
        await resp.write_eof()
        return resp

    url = await upstream_serving(big)
    gw = await make_gateway(url, proxy={"upstream_max_response_bytes": 2500})
    resp = await gw.client.get("/hr/employees/1/declared", headers=auth(keys))
    assert resp.status == 502  # refused before any of it reached the client
    resp = await gw.client.get("/hr/employees/1/chunked", headers=auth(keys))
    assert resp.status == 200  # headers were out; the body is cut short
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()
    declared, chunked = spool_events(gw.spool_dir)
    assert (declared["status"], declared["outcome"]) == (502, "upstream_response_too_large")
    assert chunked["outcome"] == "upstream_response_too_large"
    assert chunked["bytes_out"] <= 2500


async def test_an_upstream_that_trickles_past_the_total_time_limit_is_cut_and_audited(
    make_gateway: GatewayFactory, keys: Keys, upstream_serving: HandlerUpstream
) -> None:
    async def trickle(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        for _ in range(40):  # never silent long enough for read_timeout_seconds
            await resp.write(b"t")
            await asyncio.sleep(0.1)
        return resp

    url = await upstream_serving(trickle)
    gw = await make_gateway(url, proxy={"upstream_timeout_seconds": 0.5})
    resp = await gw.client.get("/hr/employees/1", headers=auth(keys))
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()
    (event,) = spool_events(gw.spool_dir)
    assert (event["decision"], event["outcome"]) == ("allow", "upstream_timeout")
    assert event["upstream_us"] < 3_000_000
