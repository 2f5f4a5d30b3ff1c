"""The register of data subjects' requests through the admin API (6.3, 6.5, 6.6, 7.3): opening a
destroy request blocks at once, the report is issued against it, closing records the act and ends
the block; an answer past 30 days is overdue in the gauges; every step is in the trail."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from typing import Any

import aiohttp

from tests.conftest import Keys, ServeFactory, Upstream, spool_records

MOSCOW = zoneinfo.ZoneInfo("Europe/Moscow")


async def _call(
    method: str, url: str, token: str, body: dict[str, Any] | None = None
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, url, headers=headers, json=body) as r,
    ):
        return r.status, await r.json()


def _days_ago(n: int) -> str:
    return (dt.datetime.now(MOSCOW).date() - dt.timedelta(days=n)).isoformat()


async def test_a_destroy_request_is_opened_blocked_reported_destroyed_and_closed_on_time(
    serve_gateway: ServeFactory, upstream: Upstream, keys: Keys
) -> None:
    gw = await serve_gateway(upstream.url)
    dpo, hr = keys.token("dana", ["dpo"]), keys.token("harriet", ["hr_officer"])
    reqs = gw.admin_url + "/admin/subject-requests"
    opening = {
        "type": "destroy",
        "subject": "emp-7",
        "received": _days_ago(1),
        "ref": "in-2026-118",
        "label": "DPO-2026-21",
    }
    sam = keys.token("sam", ["security_officer"])  # answers requests (`create`), never blocks
    status, body = await _call("POST", reqs, sam, opening)
    assert (status, body["error"]) == (403, "forbidden")  # opening a blocking request is a block
    status, body = await _call("POST", reqs, dpo, {**opening, "label": "case of emp-7"})
    assert (status, body["error"]) == (400, "bad_request") and "label" in body["message"]
    status, body = await _call("POST", reqs, dpo, {**opening, "received": "tomorrow"})
    assert (status, body["error"]) == (400, "bad_request") and body["message"].startswith(
        "received"
    )

    status, body = await _call("POST", reqs, dpo, opening)
    assert (status, body["result"], body["block"]) == (200, "opened", "blocked")
    number = body["request_no"]
    reg = body["register"]
    assert reg["standing"] == "open" and reg["block_id"] and reg["subject"] == "emp-7"
    # Blocked at once (6.5): the next read of the subject is refused.
    status, body = await _call("GET", gw.proxy_url + "/hr/employees/emp-7", hr)
    assert (status, body["error"]) == (423, "subject_blocked")

    # The subject's report issued against the request (6.3): the register notes it.
    status, body = await _call(
        "GET", gw.admin_url + f"/admin/audit/subjects/emp-8/report?request={number}", dpo
    )
    assert (status, body["error"]) == (400, "bad_request")  # another subject's id
    status, body = await _call(
        "GET", gw.admin_url + f"/admin/audit/subjects/emp-7/report?request={number}", dpo
    )
    assert status == 503  # no store in this gateway: nothing issued, nothing noted

    close = gw.admin_url + f"/admin/subject-requests/{number}/close"
    act = {"what": "personnel file", "where": "hr system", "by": "ivanov", "when": _days_ago(0)}
    # Closing a request that blocked — here with an act of destruction (7.3) — is the DPO's,
    # even when it leaves the block in place.
    status, body = await _call("POST", close, sam, {"outcome": "destroyed", "act": act})
    assert (status, body["error"]) == (403, "forbidden")
    status, body = await _call("POST", close, dpo, {"outcome": "destroyed", "unblock": True})
    assert (status, body["error"]) == (400, "bad_request") and "act" in body["message"]
    status, body = await _call(
        "POST", close, dpo, {"outcome": "destroyed", "unblock": True, "act": act}
    )
    assert (status, body["result"]) == (200, "closed")
    assert body["register"]["standing"] == "met" and body["register"]["act"] == act
    assert (await _call("GET", gw.proxy_url + "/hr/employees/emp-7", hr))[0] == 200
    status, body = await _call("POST", close, dpo, {"outcome": "destroyed", "act": act})
    assert (status, body["error"]) == (409, "closed")

    records = spool_records(gw.spool_dir)
    states = [(r["state"], r["request"]) for r in records if r["kind"] == "subject_request"]
    assert states == [("opened", number), ("closed", number)]
    closed = [r for r in records if r["kind"] == "subject_request"][-1]
    assert closed["outcome"] == "destroyed" and '"what":"personnel file"' in closed["act"]
    blocks = [(r["action"], r["block_id"]) for r in records if r["kind"] == "subject_block"]
    assert blocks[0] == ("block", reg["block_id"]) and blocks[1][0] == "unblock"
    rights = [r["change_kind"] for r in records if r["kind"] == "permission_change"]
    assert rights == ["subject_blocked", "subject_unblocked"]
    # The opening, its block and its change of access rights went in one write: adjacent.
    seq = {(r["kind"], r.get("state") or r.get("action")): r["seq"] for r in records if "seq" in r}
    assert seq[("subject_request", "opened")] == seq[("subject_block", "block")] + 2
    asked = [
        r for r in records if r["kind"] == "access" and r["route"].startswith("admin:subject-req")
    ]
    assert [(r["action"], r["decision"], r["status"]) for r in asked] == [
        ("block", "deny", 403),
        ("block", "deny", 400),
        ("block", "deny", 400),
        ("block", "allow", 0),  # the opening: pending, then its outcome
        ("block", "deny", 403),  # the security officer's closing of a destroy request
        ("block", "deny", 400),  # closing without the act
        ("block", "allow", 0),  # the closing that unblocks
        ("block", "deny", 409),  # a destroy request's closing is a block, unblocking or not
    ]


async def test_an_answer_past_30_days_is_overdue_in_the_list_and_the_gauges(
    serve_gateway: ServeFactory, upstream: Upstream, keys: Keys
) -> None:
    gw = await serve_gateway(upstream.url)
    dpo = keys.token("dana", ["dpo"])
    reqs = gw.admin_url + "/admin/subject-requests"
    for received, ref in ((_days_ago(40), "late"), (_days_ago(29), "soon"), (_days_ago(2), "ok")):
        body = {"type": "access", "subject": f"emp-{ref}", "received": received, "ref": ref}
        status, answer = await _call("POST", reqs, dpo, body)
        assert (status, answer["block"]) == (200, "")
    assert gw.metric("pdgw_subject_requests_overdue") == 1
    assert gw.metric("pdgw_subject_requests_due_soon") == 1
    assert gw.metric("pdgw_subject_requests_open") == 3
    status, answer = await _call("GET", reqs + "?overdue=1", dpo)
    assert [r["ref"] for r in answer["requests"]] == ["late"]
    assert answer["requests"][0]["days_left"] == -10
    assert answer["counts"] == {"open": 3, "overdue": 1, "due_soon": 1}
    # Listing the register is a consultation of the trail (9.2.6), recorded like any.
    listed = [
        r
        for r in spool_records(gw.spool_dir)
        if r["kind"] == "access"
        and r["route"] == "admin:subject-requests"
        and r["action"] == "read"
    ]
    assert [(r["user"], r["purpose"], r["query"]) for r in listed] == [
        ("dana", "audit_control", "overdue")
    ]
