"""A small demo HR / CRM / website back-office app holding SYNTHETIC personal data.

It trusts the gateway's X-PD-User / X-PD-Roles headers and shows them back, so the walk-through
shows what the upstream sees. Run: python deploy/local/demo_upstream.py --port 8081

`/hr/` is a server-rendered staff web app (pages, a form, no login of its own): opened through
the gateway in a browser, the gateway logs the employee in (decision 014) and the app only reads the
identity headers — the app is unchanged whether the employee came with a cookie or a token.
"""

from __future__ import annotations

import argparse
import html
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


_STYLE = "body{font-family:sans-serif;max-width:46em;margin:2em auto}td,th{padding:.2em .8em}"
NOTES: list[dict[str, str]] = []


def _page(request: web.Request, title: str, body: str) -> web.Response:
    """An HTML page of the staff app: the identity the gateway asserted, then ``body``."""
    who = _who(request)
    text = (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}"
        f"</title><style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        f'<p id="identity">Signed in as <b id="user">{html.escape(who["seen_user"])}</b> '
        f'(<span id="roles">{html.escape(who["seen_roles"])}</span>), as the gateway told '
        f"this app in X-PD-User / X-PD-Roles.</p>"
        '<nav><a href="/hr/">Home</a> · <a href="/hr/people/1001">Employee 1001</a> · '
        '<a href="/hr/notes">Notes</a></nav>'
        f"{body}"
        '<form method="post" action="/_pdgw/logout"><button id="logout">Log out</button></form>'
        "<p><small>DEMO app, synthetic data.</small></p></body></html>"
    )
    return web.Response(text=text, content_type="text/html")


async def hr_app(request: web.Request, parts: list[str]) -> web.StreamResponse:
    """The server-rendered HR app: home, an employee's page, a notes form."""
    if parts == ["hr"]:
        rows = "".join(
            f'<tr><td><a href="/hr/people/{e["id"]}">{e["id"]}</a></td>'
            f"<td>{html.escape(e['name'])}</td><td>{html.escape(e['position'])}</td></tr>"
            for e in EMPLOYEES.values()
        )
        return _page(
            request, "HR staff app", f"<table><tr><th>id<th>name<th>position</tr>{rows}</table>"
        )
    if parts[:2] == ["hr", "people"] and len(parts) == 3 and parts[2] in EMPLOYEES:
        e = EMPLOYEES[parts[2]]
        fields = "".join(f"<dt>{k}</dt><dd>{html.escape(v)}</dd>" for k, v in e.items())
        return _page(request, f"Employee {e['id']}", f"<dl>{fields}</dl>")
    if parts == ["hr", "notes"]:
        if request.method == "POST":
            form = await request.post()
            NOTES.append({"by": _who(request)["seen_user"], "text": str(form.get("text", ""))})
            saved = f'<p id="saved">Saved note #{len(NOTES)} by {html.escape(NOTES[-1]["by"])}.</p>'
        else:
            saved = ""
        items = "".join(
            f"<li>{html.escape(n['text'])} — {html.escape(n['by'])}</li>" for n in NOTES
        )
        form_html = (
            '<form method="post" action="/hr/notes"><label>Note <input name="text" id="text">'
            '</label> <button id="save">Save</button></form>'
        )
        return _page(request, "Notes", f"{saved}{form_html}<ul>{items}</ul>")
    raise web.HTTPNotFound(text="not found")


async def handle(request: web.Request) -> web.StreamResponse:
    parts = [p for p in request.path.split("/") if p]
    key = parts[2] if len(parts) > 2 else None
    if parts[:1] == ["hr"] and (len(parts) == 1 or parts[1] in ("people", "notes")):
        return await hr_app(request, parts)
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


def build_app() -> web.Application:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    args = parser.parse_args()
    web.run_app(build_app(), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
