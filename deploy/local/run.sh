#!/usr/bin/env bash
# `make run`: the demo upstream and the gateway, with what a newcomer needs printed first.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=.venv/bin
CONFIG=deploy/local/gateway.yaml

$BIN/python deploy/local/demo_upstream.py --port 8081 &
UPSTREAM=$!
trap 'kill $UPSTREAM 2>/dev/null || true' EXIT

ALICE=$($BIN/pd-gateway token --sub alice --roles hr_officer --config $CONFIG --ttl 28800)
cat <<INFO

  pd-gateway demo  (DEMO keys — never use them outside this machine)
  ───────────────
  proxy    http://127.0.0.1:8080   (staff apps talk to this)
  admin    http://127.0.0.1:9090   /metrics /healthz /readyz
  upstream http://127.0.0.1:8081   demo HR / CRM / website back office, synthetic data
  spool    var/spool                audit trail: $BIN/pd-gateway audit tail --spool var/spool

  Demo users (job functions, 4.4) — mint a token for any of them:
    alice hr_officer | bob accountant | carol sales_manager | dave support_agent
    erin web_editor  | frank security_officer | grace dpo
    $BIN/pd-gateway token --sub bob --roles accountant --config $CONFIG

  Try it (alice is an HR officer; this token is valid for 8 hours):
    curl -s -H "Authorization: Bearer $ALICE" http://127.0.0.1:8080/hr/medical/1001

INFO
$BIN/pd-gateway serve --config $CONFIG
