"""Subjects in responses (6.1.1): a list endpoint records whom it returned, bounded by a cap that
the record reports, without holding the response back; investigators find those accesses."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from gateway.audit.store.factory import open_store
from gateway.config.model import ResponseSubjects
from gateway.forwarding.response_subjects import ResponseCopy, extract
from gateway.testing.chserver import ClickHouseServer
from tests.conftest import ROUTES, Keys, ServeFactory, spool_events
from tests.stores import count, fresh_database, store_config, store_section, wait_for


def _route(max_bytes: int = 4096, max_subjects: int = 1000) -> list[dict[str, Any]]:
    routes = copy.deepcopy(ROUTES)
    routes.insert(
        0,
        {
            "name": "hr-search",
            "prefix": "/hr/search",
            "methods": ["GET"],
            "upstream": "hr",
            "system": "hr",
            "purpose": "hr_records",
            "category": "employee",
            "response_subjects": {
                "pointer": "/items/*/id",
                "max_bytes": max_bytes,
                "max_subjects": max_subjects,
            },
        },
    )
    return routes


@given(st.lists(st.text(min_size=1, max_size=8), max_size=30), st.integers(1, 10))
def test_extract_returns_distinct_ids_in_order_up_to_the_cap(ids: list[str], cap: int) -> None:
    c = ResponseCopy(ResponseSubjects(("items", "*", "id"), 1 << 20, cap))
    c.add(json.dumps({"items": [{"id": i} for i in ids]}).encode())
    found = extract(c)
    distinct = list(dict.fromkeys(ids))
    assert found.subjects == distinct[:cap]
    assert found.count == len(distinct) and found.capped == (len(distinct) > cap)


async def test_a_list_response_records_its_subjects_and_a_cut_copy_says_so(
    serve_gateway: ServeFactory,
    upstream_serving: Any,
    keys: Keys,
    chdb_dir: Path,
    ch_server: ClickHouseServer,
) -> None:
    async def search(request: web.Request) -> web.StreamResponse:
        n = int(request.query.get("n", "3"))
        body = json.dumps({"items": [{"id": f"emp-{i}", "name": "x" * 20} for i in range(n)]})
        return web.Response(body=body.encode(), content_type="application/json")

    section = store_section("embedded", fresh_database(), chdb_dir=chdb_dir, server=None)
    store = open_store(store_config(section), apply_schema=True)
    gw = await serve_gateway(
        await upstream_serving(search), routes=_route(max_bytes=4096), store=section
    )
    hr = {"Authorization": f"Bearer {keys.token('harriet', ['hr_officer'])}"}
    async with aiohttp.ClientSession() as s:
        async with s.get(gw.proxy_url + "/hr/search?n=3", headers=hr) as r:
            assert r.status == 200 and len((await r.json())["items"]) == 3
        async with s.get(gw.proxy_url + "/hr/search?n=500", headers=hr) as r:
            assert len((await r.json())["items"]) == 500  # past the cap: streamed in full
    events = spool_events(gw.spool_dir)
    small, big = (e for e in events if e["route"] == "hr-search")
    assert small["response_subjects"] == ["emp-0", "emp-1", "emp-2"]
    assert (small["response_count"], small["response_capped"]) == (3, 0)
    assert (big["response_subjects"], big["response_capped"]) == ([], 1)

    wait_for(lambda: count(store, "access_event_subjects") >= 3, 30, "shipping")
    dpo = {"Authorization": f"Bearer {keys.token('dana', ['dpo'])}"}
    async with (
        aiohttp.ClientSession() as s,
        s.get(gw.admin_url + "/admin/audit/subjects/emp-1/events", headers=dpo) as r,
    ):
        lines = [json.loads(line) for line in (await r.text()).splitlines()]
    assert [row["event_id"] for row in lines[:-1]] == [small["event_id"]]
    store.close()


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
async def test_a_list_naming_a_blocked_subject_is_refused_and_recorded(
    serve_gateway: ServeFactory, upstream_serving: Any, keys: Keys, streamed: bool
) -> None:
    """6.5: a small list of known length is read whole before any of it is sent, so naming a
    blocked subject makes it a 423 answer; a streamed one has its head sent already and is cut
    before its last chunk. Either way the client never holds the whole list."""

    async def search(request: web.Request) -> web.StreamResponse:
        ids = request.query.get("ids", "").split(",")
        body = json.dumps({"items": [{"id": i} for i in ids]}).encode()
        if not streamed:
            return web.Response(body=body, content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(body[:10])
        await resp.write(body[10:])
        await resp.write_eof()
        return resp

    gw = await serve_gateway(await upstream_serving(search), routes=_route())
    hr = {"Authorization": f"Bearer {keys.token('harriet', ['hr_officer'])}"}
    dpo = {"Authorization": f"Bearer {keys.token('dana', ['dpo'])}"}
    async with aiohttp.ClientSession() as s:
        async with s.post(
            gw.admin_url + "/admin/subject-blocks",
            headers=dpo,
            json={"subject": "emp-2", "action": "block", "reason": "subject's request 21"},
        ) as r:
            assert r.status == 200
        async with s.get(gw.proxy_url + "/hr/search?ids=emp-1,emp-3", headers=hr) as r:
            assert len((await r.json())["items"]) == 2
        cut = False
        try:
            async with s.get(gw.proxy_url + "/hr/search?ids=emp-1,emp-2", headers=hr) as r:
                answer = await r.read()
        except aiohttp.ClientError:
            cut = True
        if streamed:
            assert cut, "the client received the whole list naming a blocked subject"
        else:
            assert r.status == 423, answer
            refusal = json.loads(answer)
            assert refusal["error"] == "subject_blocked"
            assert refusal["request_id"] == r.headers["X-Request-Id"]
    events = [e for e in spool_events(gw.spool_dir) if e["route"] == "hr-search"]
    assert [e["outcome"] for e in events] == ["complete", "subject_blocked"]
    assert [e["status"] for e in events] == [200, 200 if streamed else 423]
    assert events[1]["response_subjects"] == ["emp-1", "emp-2"]
