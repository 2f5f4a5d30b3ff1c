#!/usr/bin/env bash
# What `make run` needs beyond the Python packages: Node.js and the DEMO ONLY OpenID provider's
# locked npm packages (deploy/oidc-demo), for logging in to the demo with a browser (decision 014).
# Idempotent; a no-op when they are present. `make test` installs more (scripts/system-deps.sh).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
need=()
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing Debian packages: ${need[*]}" >&2
  $SUDO apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi
if [ ! -d "$ROOT/deploy/oidc-demo/node_modules/oidc-provider" ]; then
  echo "installing the demo OpenID provider (npm ci in deploy/oidc-demo)" >&2
  (cd "$ROOT/deploy/oidc-demo" && npm ci --no-audit --no-fund --loglevel=error)
fi
