#!/usr/bin/env bash
# `make run`: the demo upstream and the gateway, with what a newcomer needs printed first.
#
# The gateway is what `pd-gateway serve` always runs (decision 030): a supervisor that owns the
# embedded store, ships, runs the detectors and answers the admin port, and one worker that
# serves the proxy port and writes its own spool (var/spool/w0).
# Both run in the background and this script waits for them. SIGTERM (make forwards it to us)
# or SIGINT (Ctrl-C) stops the gateway first — its worker drains in-flight requests and flushes
# its spool, the supervisor ships what was written — then the upstream, and waits for both:
# nothing outlives the demo (the worker ends with its supervisor), and the gateway
# never runs on answering 502 for an upstream that is gone. If either child exits on its own,
# the other is stopped too and the script exits with the first one's status.
# PD_GATEWAY_CONFIG, DEMO_UPSTREAM_PORT and DEMO_OIDC_CONFIG override the defaults (the tests
# use free ports). The DEMO OpenID provider (deploy/oidc-demo, for logging in with a browser)
# starts when its npm packages are installed (`make run` runs scripts/demo-deps.sh for that).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=.venv/bin
CONFIG=${PD_GATEWAY_CONFIG:-deploy/local/gateway.yaml}
UPSTREAM_PORT=${DEMO_UPSTREAM_PORT:-8081}
OIDC_CONFIG=${DEMO_OIDC_CONFIG:-deploy/local/oidc-provider.DEMO-ONLY.json}
GATEWAY=""
UPSTREAM=""
PROVIDER=""

stop() {
  trap - TERM INT EXIT
  local pid
  for pid in $GATEWAY $UPSTREAM $PROVIDER; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in $GATEWAY $UPSTREAM $PROVIDER; do
    wait "$pid" 2>/dev/null || true
  done
}
trap 'stop; exit 143' TERM
trap 'stop; exit 130' INT
trap stop EXIT

$BIN/python deploy/local/demo_upstream.py --port "$UPSTREAM_PORT" &
UPSTREAM=$!
mkdir -p var
if [ -d deploy/oidc-demo/node_modules/oidc-provider ] && command -v node >/dev/null 2>&1; then
  node deploy/oidc-demo/provider.mjs "$OIDC_CONFIG" 2>/dev/null &
  PROVIDER=$!
  LOGIN="open http://127.0.0.1:8080/hr/ in a browser; log in as alice (any password)"
else
  LOGIN="(browser login: run ./scripts/system-deps.sh first — it installs the demo provider)"
fi

ALICE=$($BIN/pd-gateway token --sub alice --roles hr_officer --config "$CONFIG" --ttl 28800)
cat <<INFO

  pd-gateway demo  (DEMO keys — never use them outside this machine)
  ───────────────
  proxy    http://127.0.0.1:8080   (staff apps talk to this: the worker that serves)
  admin    http://127.0.0.1:9470   /metrics /healthz /readyz, the audit API (the supervisor)
  console  http://127.0.0.1:8090/_pdgw/console/   the trail in a browser (grace: dpo, frank: security_officer)
  upstream http://127.0.0.1:$UPSTREAM_PORT   demo HR / CRM / website back office, synthetic data
  spool    var/spool                audit trail (every chain: w0#… requests, supervisor#… admin):
                                    $BIN/pd-gateway audit tail --spool var/spool
  login    http://127.0.0.1:8082   DEMO ONLY OpenID provider (any password for the demo users)

  In a browser: $LOGIN

  Demo users (job functions, 4.4) — mint a token for any of them:
    alice hr_officer | bob accountant | carol sales_manager | dave support_agent
    erin web_editor  | frank security_officer | grace dpo
    $BIN/pd-gateway token --sub bob --roles accountant --config $CONFIG

  Try it (alice is an HR officer; this token is valid for 8 hours):
    curl -s -H "Authorization: Bearer $ALICE" http://127.0.0.1:8080/hr/medical/1001

  Stop with Ctrl-C (or SIGTERM): the gateway drains, flushes and ships its spools, then the upstream
  stops.

INFO
$BIN/pd-gateway serve --config "$CONFIG" &
GATEWAY=$!

# Whichever child ends first ends the demo. `wait -n` returns early when a trapped signal arrives.
status=0
wait -n "$GATEWAY" "$UPSTREAM" $PROVIDER || status=$?
stop
exit "$status"
