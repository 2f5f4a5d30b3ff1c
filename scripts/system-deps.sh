#!/usr/bin/env bash
# Install the Debian packages the tests and benchmarks run for real: promtool (prometheus),
# wrk (load generator), clickhouse-server (the real server the audit-store fault tests start on
# loopback), docker-compose (`docker-compose config` validates deploy/compose; no engine needed),
# chromium (the browser-login tests drive it with Playwright), php-cli (its built-in server is an
# upstream that reads requests as PHP does: tests/forwarding) and nodejs/npm, then the demo
# OpenID provider's locked npm packages (deploy/oidc-demo: `npm ci`, used by `make run` and the
# browser-login tests) and the console's (assets/console, checked against their vendored copies),
# zookeeper (the keeper of the two-replica ClickHouse cluster
# tests/audit/test_cluster.py starts on loopback; the package has no service of its own — that is
# `zookeeperd`, never installed here). Idempotent; a no-op when they are present.
#
# No host service is started. Debian's `prometheus` package would start a server on :9090 (and
# its recommended node exporter on :9100) on a host with systemd or sysvinit; the tests only
# need promtool. So, for the duration of the install, a policy-rc.d that denies every start
# (exit 101: "action forbidden"; invoke-rc.d and deb-systemd-invoke both honour it) is put in
# place unless the host already has one, recommends are not installed, and afterwards the
# units the install enabled are disabled so they do not start at the next boot either.
set -euo pipefail
need=()
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
[ -x /usr/sbin/clickhouse-server ] || command -v clickhouse-server >/dev/null 2>&1 || need+=(clickhouse-server clickhouse-client)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
command -v php >/dev/null 2>&1 || need+=(php-cli)
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
oidc_demo() {  # the demo OpenID provider's packages, exactly as package-lock.json pins them
  local dir="$ROOT/deploy/oidc-demo"
  if [ ! -d "$dir/node_modules/oidc-provider" ]; then
    echo "installing the demo OpenID provider (npm ci in deploy/oidc-demo)" >&2
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
  fi
  # The console's vendored libraries as their lockfile pins them: the tests compare the copies
  # in gateway/web/console/static/vendor/ with these (`make vendor` makes the copies).
  if [ ! -d "$ROOT/assets/console/node_modules/htmx.org" ]; then
    echo "installing the console's browser libraries (npm ci in assets/console)" >&2
    (cd "$ROOT/assets/console" && npm ci --no-audit --no-fund --loglevel=error)
  fi
}
[ -e /usr/share/java/zookeeper.jar ] || need+=(zookeeper)
# `make bench` only (WITH_BENCH=1): nginx, the upstream and the reference proxy of the benchmark.
if [ "${WITH_BENCH:-}" = 1 ]; then
  [ -x /usr/sbin/nginx ] || need+=(nginx)
  command -v valgrind >/dev/null 2>&1 || need+=(valgrind)  # bench/instructions.py
fi
if [ ${#need[@]} -eq 0 ]; then
  oidc_demo
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "installing Debian packages: ${need[*]}" >&2

POLICY=/usr/sbin/policy-rc.d
if [ ! -e "$POLICY" ]; then
  printf '#!/bin/sh\n# pd-gateway scripts/system-deps.sh: no service starts during this install\nexit 101\n' \
    | $SUDO tee "$POLICY" >/dev/null
  $SUDO chmod 755 "$POLICY"
  trap '$SUDO rm -f "$POLICY"' EXIT
fi
$SUDO apt-get update -q >/dev/null
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
  for unit in prometheus clickhouse-server nginx; do  # only what this run installed
    [[ " ${need[*]} " == *" $unit "* ]] || continue
    $SUDO systemctl disable --now "$unit" >/dev/null 2>&1 || true
  done
fi
oidc_demo
