#!/usr/bin/env bash
# Everything stockflow needs on a fresh Debian-like machine with Java 17 and Maven:
# redis-server from Debian's packages, a venv with stockflow and its dev extra.
# Idempotent: a warm machine skips what it already has.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v java >/dev/null 2>&1 || need_apt+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || need_apt+=(maven)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing ${need_apt[*]} from Debian's packages"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
  # Debian may start a system redis on 6379 right after the install; the stack runs its own.
  if [[ " ${need_apt[*]} " == *" redis-server "* ]]; then
    $SUDO service redis-server stop >/dev/null 2>&1 || $SUDO systemctl stop redis-server >/dev/null 2>&1 || true
  fi
fi

# promtool checks docker/alerts.yml (tests/unit/test_alerts_promtool.py); about 10 s to
# install. Only the tool is wanted: no recommends, and stop the server the package may start.
if ! command -v promtool >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing prometheus (for promtool) from Debian's packages"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  $SUDO service prometheus stop >/dev/null 2>&1 || $SUDO systemctl stop prometheus >/dev/null 2>&1 || true
fi

# The reservation page's browser test (tests/integration/test_reservations.py) drives
# Debian's chromium through its chromedriver with selenium.
if ! command -v chromedriver >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing chromium and chromium-driver from Debian's packages"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints.txt -e '.[dev]'
