#!/usr/bin/env bash
# Install Debian's headless-capable Chromium when it is missing (the dashboard's browser test
# drives it). Idempotent: does nothing when /usr/bin/chromium is already there.
set -euo pipefail

# Debian's /usr/bin/chromium is a launcher script whose /etc/chromium.d/dev-shm snippet breaks
# ("[: N: unexpected operator") when findmnt reports several /dev/shm mounts; the version is
# asked of the binary itself so that noise never shows.
chromium_version() {
  local bin=/usr/lib/chromium/chromium
  [ -x "$bin" ] || bin=/usr/bin/chromium
  "$bin" --version 2>/dev/null || echo "$bin"
}

if [ -x /usr/bin/chromium ]; then
  echo "chromium present: $(chromium_version)"
  exit 0
fi

SUDO=""
if [ "$(id -u)" != "0" ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
  else
    echo "error: chromium is missing and this user cannot install packages (not root, no sudo);" >&2
    echo "       install Debian's 'chromium' package, then re-run the tests" >&2
    exit 1
  fi
fi

echo "installing chromium from Debian (apt-get) ..."
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
echo "chromium installed: $(chromium_version)"
