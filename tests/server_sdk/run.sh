#!/usr/bin/env bash
# The OpenAI Node SDK against `moeflux serve` (a ctest test, tests/CMakeLists.txt).
#   run.sh MOEFLUX_BINARY MODEL_DIR WORK_DIR
# Installs the pinned SDK into WORK_DIR with `npm ci` (package-lock.json; again only when the
# lockfile changed), starts the server on a free loopback port with an API key, runs
# sdk_test.mjs (node:test), then stops the server with SIGTERM, which must exit 0.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=$1 model=$2 work=$3
mkdir -p "$work"
if ! cmp -s "$here/package-lock.json" "$work/package-lock.json" || [[ ! -d $work/node_modules ]]; then
  cp "$here/package.json" "$here/package-lock.json" "$work/"
  (cd "$work" && npm ci --no-audit --no-fund --loglevel=error)
fi
cp "$here/sdk_test.mjs" "$work/"

"$bin" serve -m "$model" --port 0 --api-key test-key --parallel 2 --threads 2 --ctx 2048 \
  >"$work/server.out" 2>"$work/server.err" &
pid=$!
trap 'kill -KILL $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
  grep -q '^listening on ' "$work/server.out" 2>/dev/null && break
  kill -0 $pid 2>/dev/null || { cat "$work/server.err" >&2; exit 1; }
  sleep 0.1
done
url=$(sed -n 's/^listening on //p' "$work/server.out")
[[ -n $url ]] || { echo "the server did not start" >&2; cat "$work/server.err" >&2; exit 1; }

status=0
(cd "$work" && MOEFLUX_BASE_URL="$url/v1" node --test sdk_test.mjs) || status=$?
kill -TERM $pid
server_status=0
wait $pid || server_status=$?
trap - EXIT
if [[ $server_status -ne 0 ]]; then
  echo "moeflux serve exited with status $server_status after SIGTERM" >&2
  cat "$work/server.err" >&2
  exit 1
fi
exit $status
