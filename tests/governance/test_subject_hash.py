"""Subject ids as keyed hashes in the trail (5.3, decision 015): nothing in the spool or the store
names the subject in clear, yet investigators find and block by the real id, across a rotation."""

from __future__ import annotations

import json
import os
from pathlib import Path

import aiohttp
from hypothesis import given
from hypothesis import strategies as st

from gateway.audit.store.factory import open_store
from gateway.governance.subject_hash import SubjectHasher
from gateway.testing.chserver import ClickHouseServer
from tests.conftest import Keys, ServeFactory, Upstream, spool_records
from tests.stores import count, fresh_database, store_config, store_section, wait_for

K1, K2 = os.urandom(32), os.urandom(32)


@given(st.text(min_size=1, max_size=64))
def test_a_hash_is_stable_keyed_and_found_after_a_rotation(subject: str) -> None:
    old, rotated = SubjectHasher([K1]), SubjectHasher([K2, K1])
    assert old.stored(subject) == old.stored(subject) != subject
    assert old.stored(subject) != SubjectHasher([K2]).stored(subject)
    assert rotated.candidates(subject) == [rotated.stored(subject), old.stored(subject)]
    assert SubjectHasher([]).stored(subject) == subject  # off without a key


async def _get(url: str, token: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as s,
        s.get(url, headers={"Authorization": f"Bearer {token}"}) as r,
    ):
        return r.status, await r.text()


async def test_the_trail_holds_no_subject_in_clear_and_investigators_search_by_the_real_id(
    serve_gateway: ServeFactory,
    upstream: Upstream,
    keys: Keys,
    tmp_path: Path,
    chdb_dir: Path,
    ch_server: ClickHouseServer,
) -> None:
    (tmp_path / "k1").write_bytes(K1.hex().encode())
    (tmp_path / "k2").write_bytes(K2.hex().encode())
    section = store_section("embedded", fresh_database(), chdb_dir=chdb_dir, server=None)
    store = open_store(store_config(section), apply_schema=True)
    gw = await serve_gateway(
        upstream.url, store=section, audit={"subject_key_file": str(tmp_path / "k1")}
    )
    hr = keys.token("harriet", ["hr_officer"])
    sales = keys.token("sven", ["sales_manager"])
    assert (await _get(gw.proxy_url + "/hr/employees/emp-4242", hr))[0] == 200
    assert (await _get(gw.proxy_url + "/site/leads?lead_id=visitor-77&x=1", sales))[0] == 200
    records = spool_records(gw.spool_dir)
    text = json.dumps(records)
    assert "emp-4242" not in text and "visitor-77" not in text
    accesses = [r for r in records if r["kind"] == "access"]
    assert accesses[0]["path"].startswith("/hr/employees/h:")
    assert accesses[1]["query"].startswith("lead_id=h:") and accesses[1]["query"].endswith("&x=1")
    assert accesses[0]["subject_ids"] == [accesses[0]["path"].rsplit("/", 1)[1]]
    wait_for(lambda: count(store) >= 2, 30, "shipping")

    dpo = keys.token("dana", ["dpo"])
    status, body = await _get(gw.admin_url + "/admin/audit/subjects/emp-4242/events", dpo)
    rows = [json.loads(line) for line in body.splitlines()][:-1]
    assert status == 200 and [r["user"] for r in rows] == ["harriet"]
    asked = [r for r in spool_records(gw.spool_dir) if r.get("route") == "admin:audit/subject"]
    assert "emp-4242" not in json.dumps(asked)  # the query's own record too

    # A block by the real id, then a rotation: a replica with the new key (the old one kept as
    # previous) still finds the old accesses and still enforces the old block.
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            gw.admin_url + "/admin/subject-blocks",
            headers={"Authorization": f"Bearer {dpo}"},
            json={"subject": "emp-4242", "action": "block", "reason": "subject's request 20"},
        ) as r,
    ):
        assert r.status == 200
    assert "emp-4242" not in json.dumps(spool_records(gw.spool_dir))
    wait_for(lambda: count(store, "subject_blocks") >= 1, 30, "the block shipped")
    rotated = await serve_gateway(
        upstream.url,
        store=section,
        audit={
            "subject_key_file": str(tmp_path / "k2"),
            "subject_previous_key_files": [str(tmp_path / "k1")],
        },
    )
    assert (await _get(rotated.proxy_url + "/hr/employees/emp-4242", hr))[0] == 423
    status, body = await _get(rotated.admin_url + "/admin/audit/subjects/emp-4242/events", dpo)
    rows = [json.loads(line) for line in body.splitlines()][:-1]
    assert [(r["user"], r["status"]) for r in rows][:1] == [("harriet", 200)]
    store.close()
