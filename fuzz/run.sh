#!/usr/bin/env bash
# Builds the fuzz targets with cargo-afl and runs one (or all, one after the other) with a
# single afl-fuzz process for SECONDS each, then prints executions and coverage.
#
#   fuzz/run.sh TARGET SECONDS     e.g. fuzz/run.sh framer 600
#   fuzz/run.sh all SECONDS
#
# Needs cargo-afl (`cargo install cargo-afl`, which builds AFL++ from source). Findings go
# to fuzz/out/<target>/default/{crashes,hangs}; copy each crash into
# fuzz/regressions/<target>/ once fixed, so that `cargo test --test fuzz_corpus` replays it.
set -euo pipefail
cd "$(dirname "$0")"

targets=(framer stanza c2s sasl jid bosh config negotiate_c2s negotiate_s2s)
if [ $# -ne 2 ] || ! [[ $2 =~ ^[0-9]+$ ]]; then
  echo "usage: $0 {all|${targets[*]// /|}} SECONDS" >&2
  exit 2
fi
if [ "$1" = all ]; then
  selected=("${targets[@]}")
else
  [[ " ${targets[*]} " == *" $1 "* ]] || { echo "unknown target: $1" >&2; exit 2; }
  selected=("$1")
fi
seconds=$2

command -v cargo-afl >/dev/null || { echo "cargo-afl missing: cargo install cargo-afl" >&2; exit 1; }
cargo afl build --release --features afl --bins

# Without a network of its own if possible: the c2s target runs a server in-process, and
# whatever it might try to reach, only loopback exists there.
sandbox=()
if [ "$(id -u)" -eq 0 ] && unshare -n true 2>/dev/null; then
  sandbox=(unshare -n sh -c 'ip link set lo up 2>/dev/null || true; exec "$@"' sh)
fi

# Shared CI machines: no CPU binding, no core-pattern or frequency checks.
export AFL_NO_AFFINITY=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
export AFL_NO_UI=1 AFL_QUIET=1

summary=()
for t in "${selected[@]}"; do
  out="out/$t"
  mkdir -p "$out"
  # Resume where the last run stopped (its queue), or start from the seeds.
  input=(-i "corpus/$t")
  [ -d "$out/default/queue" ] && input=(-i -)
  dict=()
  [ -f "dict/$t.dict" ] && dict=(-x "dict/$t.dict")
  echo "== $t: ${seconds}s"
  "${sandbox[@]}" cargo afl fuzz "${input[@]}" -o "$out" "${dict[@]}" -V "$seconds" -t 10000 \
    "target/release/$t" >"$out/afl.log" 2>&1 || {
    echo "afl-fuzz failed for $t; see fuzz/$out/afl.log" >&2
    tail -20 "$out/afl.log" >&2
    exit 1
  }
  stats="$out/default/fuzzer_stats"
  get() { sed -n "s/^$1 *: *//p" "$stats"; }
  crashes=$(find "$out/default/crashes" -type f -name 'id:*' 2>/dev/null | wc -l)
  hangs=$(find "$out/default/hangs" -type f -name 'id:*' 2>/dev/null | wc -l)
  line="$t: $(get execs_done) execs in $(get run_time)s ($(get execs_per_sec)/s), edges $(get edges_found)/$(get total_edges) ($(get bitmap_cvg)), paths $(get corpus_count), crashes $crashes, hangs $hangs"
  echo "$line"
  summary+=("$line")
done
echo "== summary"
printf '%s\n' "${summary[@]}"
