#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what the tests need (Debian
# packages for interop), then checks formatting and lints, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
/usr/bin/python3 -c 'import slixmpp' 2>/dev/null || missing+=(python3-slixmpp)
# slixmpp's XEP-0363 upload uses aiohttp; tests/upload.rs also drives curl.
/usr/bin/python3 -c 'import aiohttp' 2>/dev/null || missing+=(python3-aiohttp)
command -v curl >/dev/null 2>&1 || missing+=(curl)
# tests/s2s_prosody.rs federates with a real Prosody; lua-unbound lets it use the test's
# DNS server (a Recommends of prosody, which --no-install-recommends would skip).
command -v prosody >/dev/null 2>&1 || missing+=(prosody)
dpkg -s lua-unbound >/dev/null 2>&1 || missing+=(lua-unbound)
# tests/interop_browser.rs runs Strophe.js in Debian's headless Chromium over WebSocket.
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo=sudo
  echo "installing: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Strophe.js (the XMPP library of many web clients) and Converse.js (a complete web
# client) from the npm registry, pinned, into target/ (not committed);
# tests/interop_browser.rs and tests/interop_converse.rs load them into the browser.
# xmpp.js (@xmpp/client) speaks SASL2, Bind 2 and FAST: tests/interop_xmppjs.rs runs it
# in Node.js.
strophe=target/interop/node_modules/strophe.js/dist/strophe.umd.min.js
converse=target/interop/node_modules/converse.js/dist/converse.min.js
xmppjs=target/interop/node_modules/@xmpp/client/package.json
if [ ! -f "$strophe" ] || [ ! -f "$converse" ] || [ ! -f "$xmppjs" ]; then
  mkdir -p target/interop
  npm install --prefix target/interop --no-audit --no-fund --loglevel=error \
    strophe.js@5.0.0 converse.js@14.0.0 @xmpp/client@0.14.0
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

# --- Fuzz corpora -------------------------------------------------------------------
# Replays every saved fuzz input (fuzz/corpus seeds and fuzz/regressions crashes) through
# the fuzz targets with plain cargo: no AFL++ install, a few seconds. Fuzzing itself is
# fuzz/run.sh (fuzz/README.md).
cargo test --test fuzz_corpus
# -------------------------------------------------------------------------------------

cargo test --workspace
