"""The console: the audit trail in a browser for the DPO and investigators (decision 025).

Server-rendered pages (Jinja2 templates and static files shipped in the package), each request
authorised by the policy and recorded in the trail (9.2.6) through ``access.ConsoleTrail``.
"""
