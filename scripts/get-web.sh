#!/usr/bin/env bash
# The browser runtime's two system pieces (issue 34): Debian's Chromium (apt; playwright drives it through
# executable_path, no browser download) and the pinned JS packages of exporter/web (npm ci from the lock
# file). Where a registry is unreachable this says so and exits 0: the set-up never fails here, and the
# browser tests then skip naming what is missing.
set -u
here="$(cd "$(dirname "$0")/.." && pwd)"
web="$here/exporter/web"
found=""
for name in "${RESEXPORT_CHROMIUM:-}" chromium chromium-browser google-chrome; do
  [ -n "$name" ] && command -v "$name" >/dev/null 2>&1 && { found="$(command -v "$name")"; break; }
done
if [ -n "$found" ]; then
  echo "chromium: found $found"
elif command -v apt-get >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo -n"
  if $sudo apt-get install -y -qq chromium >/dev/null 2>&1 ||
     { $sudo apt-get update -qq >/dev/null 2>&1 && $sudo apt-get install -y -qq chromium >/dev/null 2>&1; }; then
    echo "chromium: installed Debian package chromium"
  else
    echo "chromium: the Debian package is not installable here; the browser runtime will be missing"
  fi
else
  echo "chromium: no apt-get here; install Chromium and set RESEXPORT_CHROMIUM"
fi
if ! command -v npm >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo -n"
  $sudo apt-get install -y -qq npm >/dev/null 2>&1 || true
fi
if ! command -v npm >/dev/null 2>&1; then
  echo "js packages: npm is not installed; the browser runtime will be missing"
  exit 0
fi
stamp="$web/node_modules/.resexport-installed-lock"
if [ -f "$stamp" ] && cmp -s "$web/package-lock.json" "$stamp"; then
  echo "js packages: up to date in $web/node_modules"
elif (cd "$web" && npm ci --no-audit --no-fund --loglevel=error >/dev/null 2>&1); then
  cp "$web/package-lock.json" "$stamp"
  echo "js packages: installed from $web/package-lock.json"
else
  echo "js packages: npm ci failed (registry unreachable?); the browser runtime will be missing"
fi
exit 0
