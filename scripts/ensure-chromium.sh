#!/usr/bin/env bash
# Install Debian's headless-capable Chromium when it is missing (the dashboard's browser test
# drives it). Idempotent: does nothing when /usr/bin/chromium is already there.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
  echo "chromium present: $(/usr/bin/chromium --version 2>/dev/null || echo /usr/bin/chromium)"
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
/usr/bin/chromium --version
