#!/usr/bin/env bash
# Headless Chromium for tests/test_report.py (the report page opened in a real browser), from Debian's packages.
# Idempotent: nothing to do when chromium (or chromium-browser) is on PATH. Installing needs root (or sudo).
set -euo pipefail
for name in chromium chromium-browser; do
  if command -v "$name" >/dev/null 2>&1; then
    echo "install_browser: $(command -v "$name") is installed"
    exit 0
  fi
done
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_browser: no chromium on PATH and no apt-get here; install Chromium with this system's package manager (the tests look for 'chromium' or 'chromium-browser')" >&2
  exit 2
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "install_browser: installing chromium needs root: run 'apt-get update && apt-get install -y chromium' as root" >&2
    exit 2
  fi
  sudo="sudo"
fi
echo "install_browser: installing chromium (apt-get)"
$sudo apt-get update -qq
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
echo "install_browser: $(command -v chromium) installed: $(chromium --version 2>/dev/null | head -1)"
