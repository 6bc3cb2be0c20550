#!/usr/bin/env bash
# Instructions per delivered message, load-independent: runs the chat scenario of
# bench/run.sh with xmppd under valgrind's callgrind, instrumentation switched on once
# every session is online, and divides the server's user-space instructions by the
# messages it routed (calls of `router::deliver::offer`). perf has no hardware counters
# on the VMs this was written on, and CPU time there moves with the neighbours' load.
#
#   bench/callgrind.sh LABEL                 # archive off, 20 pairs, window 1
#   ARCHIVE=always WINDOW=10 bench/callgrind.sh LABEL
#
# Needs valgrind (apt-get install valgrind). The profile is kept as
# $OUT/LABEL.callgrind for callgrind_annotate. A run takes about 15 s. Archive-on runs
# are comparable only at the same count of archive memtable flushes (printed).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
LABEL=${1:?usage: bench/callgrind.sh LABEL}
OUT=${OUT:-/tmp/xmppd-callgrind}
BIN=${XMPPD:-$ROOT/target/release/xmppd}
mkdir -p "$OUT"
rm -f "$OUT"/callgrind.out.* "$OUT/serve.pid"
[ -n "${XMPPD:-}" ] || (cd "$ROOT" && cargo build --release -q --bin xmppd)

# run.sh starts `$XMPPD serve ...` and other subcommands: only `serve` runs under valgrind.
wrapper=$OUT/xmppd-under-callgrind
cat >"$wrapper" <<WRAP
#!/usr/bin/env bash
if [ "\$1" = serve ]; then
	echo \$\$ >$OUT/serve.pid
	exec valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=$OUT/callgrind.out.%p "$BIN" "\$@"
fi
exec "$BIN" "\$@"
WRAP
chmod +x "$wrapper"

log=$OUT/$LABEL.log
(XMPPD=$wrapper ARCHIVE=${ARCHIVE:-never} XMPPD_DIR=$OUT/state RESULTS_DIR=$OUT/results-$LABEL \
	"$HERE/run.sh" --server xmppd chat --pairs "${PAIRS:-20}" --window "${WINDOW:-1}" \
	--body-bytes 100 --seconds 4 --warmup 1 >"$log" 2>&1) &
runner=$!
until grep -q "sessions online" "$log" 2>/dev/null; do
	kill -0 "$runner" 2>/dev/null || break
	sleep 0.2
done
# By pid: other callgrind runs on the machine must not be switched on (or this one by them).
callgrind_control -i on "$(cat "$OUT/serve.pid")" >/dev/null 2>&1 || true
wait "$runner" || { tail -20 "$log" >&2; exit 1; }
profile=$(ls -t "$OUT"/callgrind.out.* | head -1)
mv "$profile" "$OUT/$LABEL.callgrind"
tree=$(callgrind_annotate --tree=calling --inclusive=yes "$OUT/$LABEL.callgrind" 2>/dev/null)
total=$(grep "PROGRAM TOTALS" <<<"$tree" | awk '{gsub(",", "", $1); print $1}')
messages=$(grep "=> .*xmppd::router::deliver::offer (" <<<"$tree" | grep -o '([0-9,]*x)' |
	tr -d '(),x' | sort -n | tail -1)
# With the archive on, a fjall memtable flush inside the window is worth about 5 k per
# message in a run this short: compare only runs with the same count.
flushes=$(grep "=> .*fjall::flush::worker::run (" <<<"$tree" | grep -o '([0-9,]*x)' |
	tr -d '(),x' | awk '{n += $1} END {print n + 0}')
echo "$LABEL: $total instructions, $messages messages, $((total / messages)) per message, $flushes archive memtable flushes"
