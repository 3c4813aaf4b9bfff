#!/usr/bin/env bash
# Chromium for the admin UI's browser tests (tests/admin/e2e, Playwright for Python): Debian's
# `chromium` package, installed when missing. Playwright downloads no browser here (these
# machines cannot reach its CDN, and hospitals' closed networks neither): the tests launch
# /usr/bin/chromium through `executable_path`. Idempotent: nothing to do when it is installed.
#
# `apt-get update` runs only when the install fails, for lack of package lists (a fresh image),
# so a machine that has its lists installs without touching the network more than it must.
set -euo pipefail

CHROMIUM=${CHROMIUM:-/usr/bin/chromium}

log() { echo "chromium.sh: $*" >&2; }

if [ -x "$CHROMIUM" ]; then
  exit 0
fi

as_root=()
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null; then
    log "$CHROMIUM is missing and this user cannot install it (not root, no sudo)"
    exit 1
  fi
  as_root=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
log "installing Debian's chromium"
if ! "${as_root[@]}" apt-get install -y -qq chromium >/dev/null; then
  log "the install failed: updating the package lists and trying again"
  "${as_root[@]}" apt-get update -qq
  "${as_root[@]}" apt-get install -y -qq chromium >/dev/null
fi
[ -x "$CHROMIUM" ] || { log "chromium was installed but $CHROMIUM is missing"; exit 1; }
log "$("$CHROMIUM" --version 2>/dev/null || echo chromium) installed"
