"""A small demo HR / CRM / website back-office app holding SYNTHETIC personal data.

It trusts the gateway's X-PD-User / X-PD-Roles headers and shows them back, so the walk-through
shows what the upstream sees. Run: python deploy/local/demo_upstream.py --port 8081
"""

from __future__ import annotations

import argparse
import json

from aiohttp import web

EMPLOYEES = {
    "1001": {
        "id": "1001",
        "name": "Ivanova Anna Sergeevna",
        "position": "Engineer",
        "phone": "+7 900 000-00-01",
    },
    "1002": {
        "id": "1002",
        "name": "Petrov Boris Ivanovich",
        "position": "Accountant",
        "phone": "+7 900 000-00-02",
    },
}
MEDICAL = {
    "1001": {"id": "1001", "certificate": "fit for work (synthetic)", "valid_until": "2027-01-31"}
}
COUNTERPARTIES = {
    "c-501": {
        "id": "c-501",
        "name": "Sidorov Pavel",
        "inn": "000000000001",
        "email": "p.sidorov@example.invalid",
    },
}
LEADS = {"l-77": {"id": "l-77", "name": "Smirnova Olga", "email": "olga@example.invalid"}}
CATALOG = [{"sku": "vm-small", "title": "Virtual machine, small"}]


def _who(request: web.Request) -> dict[str, str]:
    return {
        "seen_user": request.headers.get("X-PD-User", ""),
        "seen_roles": request.headers.get("X-PD-Roles", ""),
    }


def _one_or_all(table: dict[str, dict[str, str]], key: str | None) -> web.Response:
    if key is None:
        return web.json_response(list(table.values()))
    if key not in table:
        raise web.HTTPNotFound(
            text=json.dumps({"error": "not found"}), content_type="application/json"
        )
    return web.json_response(table[key])


async def handle(request: web.Request) -> web.StreamResponse:
    parts = [p for p in request.path.split("/") if p]
    key = parts[2] if len(parts) > 2 else None
    if request.method not in ("GET", "HEAD"):
        body = await request.read()
        return web.json_response(
            {
                "ok": True,
                "method": request.method,
                "path": request.path,
                "received_bytes": len(body),
                **_who(request),
            }
        )
    match parts[:2]:
        case ["hr", "employees"]:
            return _one_or_all(EMPLOYEES, key)
        case ["hr", "medical"]:
            return _one_or_all(MEDICAL, key)
        case ["hr", "export"]:
            rows = "\n".join(f"{e['id']};{e['name']};{e['position']}" for e in EMPLOYEES.values())
            return web.Response(text="id;name;position\n" + rows + "\n", content_type="text/csv")
        case ["crm", "counterparties"]:
            return _one_or_all(COUNTERPARTIES, key)
        case ["crm", "catalog"]:
            return web.json_response(CATALOG)
        case ["site", "leads"]:
            return _one_or_all(LEADS, request.query.get("lead_id"))
    return web.json_response({"path": request.path, **_who(request)})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    args = parser.parse_args()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
