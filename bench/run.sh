#!/usr/bin/env bash
# Run one xmppd-bench scenario against Prosody, xmppd and/or the minimal relay (the floor,
# `xmppd-bench relay`), server and generator pinned to different cores.
#
#   bench/run.sh [--server prosody|xmppd|relay|both|LIST] SCENARIO [SCENARIO ARGS...]
#
# LIST is servers separated by commas, run in that order, e.g. relay,xmppd (both =
# prosody,xmppd); ROUNDS=N runs the whole list N times, interleaved (relay, xmppd, relay,
# xmppd, ...). The relay supports login, idle and chat.
#
#   bench/run.sh login --users 1000 --concurrency 100
#   bench/run.sh idle  --users 1000 --seconds 10
#   bench/run.sh chat  --pairs 100 --window 10 --body-bytes 100 --seconds 10
#   bench/run.sh roster --users 1000 --contacts 5      (runs setup-roster first)
#   bench/run.sh muc   --occupants 100 --senders 10 --seconds 10  (one chat room)
#   bench/run.sh --server xmppd upload --bytes 10000000   (XEP-0363 PUT + GET, MB/s, RSS)
#   bench/run.sh --server both chat --pairs 100        (then prints a ratio table)
#   ROUNDS=3 ARCHIVE=never bench/run.sh --server relay,xmppd chat --pairs 100 --window 1
#                                    (interleaved; a summary table, ratios to the first)
#   bench/run.sh --server xmppd roster-login --contacts 1000 --online 500 --repeat 20
#                                    (runs setup-star first: one hub, 1000 mutual contacts)
#   bench/run.sh --server xmppd offline-queue --messages 10000   (raises the offline quota)
#
# Settings (environment):
#   SERVER_CPU   core for the server   [0]        GEN_CPU  core for the generator [1]
#   USERS        accounts to create    [from --users, or 2 x --pairs, else 1000]
#   RESULTS_DIR  where outputs go      [/tmp/xmppd-bench/results/<date>-<scenario>]
#   XMPPD_DIR    xmppd state dir       [/tmp/xmppd-bench/xmppd]
#   XMPPD_PORT   xmppd c2s port        [15232]    (Prosody: see prosody-setup.sh, 15222)
#   RELAY_PORT   relay port            [15242]    (its certificate is xmppd's, CERT_KEY)
#   ROUNDS       how many times to run the server list                         [1]
#   GEN_ARGS     extra generator options placed before the scenario (e.g. "--mech PLAIN")
#   ARCHIVE      xmppd's [archive] default_policy: always (xmppd's default, MAM on) or
#                never (MAM off, like the Prosody configuration here)       [always]
#   SYNC_WRITES  xmppd's [storage] sync_writes: true (default: fsync before the ack) or
#                false                                                        [true]
#   MUC_ARCHIVE  xmppd's [muc] archive (room messages archived for MAM)        [true]
#   ARCHIVE_PARTITION_MB xmppd's [storage] archive_partition_mb              [32]
#   TLS_TICKETS  xmppd's [tls] session_tickets (TLS 1.3 resumption), and the relay's
#                --tickets                                   [unset: default, true]
#   CERT_KEY     xmppd's certificate key: ec (ECDSA P-256, as Prosody's) or rsa (2048)
#                                                                               [ec]
#   XMPPD        the xmppd binary to run, not built when given (compare two builds)
#                                                      [target/release/xmppd, built]
#   OFFLINE_QUOTA xmppd's [limits] offline_quota   [offline-queue: --messages (10000);
#                                                   other scenarios: xmppd's default]
#   XMPPD_SEED_DB a store to start xmppd from, copied as its database before each run
#                (for example a MAM_BENCH_DIR that examples/mam_bench filled with 10 M
#                archived messages: the chat scenario against a large archive)  [unset]
# Every scenario gets --server-pid (server CPU and RSS figures) automatically.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
BENCH=$ROOT/target/release/xmppd-bench
XMPPD_GIVEN=${XMPPD:+yes}
XMPPD=${XMPPD:-$ROOT/target/release/xmppd}
SERVER_CPU=${SERVER_CPU:-0}
GEN_CPU=${GEN_CPU:-1}
XMPPD_DIR=${XMPPD_DIR:-/tmp/xmppd-bench/xmppd}
XMPPD_PORT=${XMPPD_PORT:-15232}
RELAY_PORT=${RELAY_PORT:-15242}
ROUNDS=${ROUNDS:-1}
export PROSODY_DIR=${PROSODY_DIR:-/tmp/xmppd-bench/prosody}
export PROSODY_PORT=${PROSODY_PORT:-15222}

log() { echo "run.sh: $*" >&2; }
die() {
	log "$*"
	exit 1
}

SERVERS=prosody
while [ $# -gt 0 ]; do
	case "$1" in
	--server)
		SERVERS=${2:?--server needs a value}
		shift 2
		;;
	--server=*)
		SERVERS=${1#--server=}
		shift
		;;
	*) break ;;
	esac
done
[ $# -ge 1 ] || die "usage: $0 [--server prosody|xmppd|relay|both|LIST] SCENARIO [ARGS...]"
SCENARIO=$1
shift
ARGS=("$@")
[ "$SERVERS" = both ] && SERVERS=prosody,xmppd
IFS=, read -r -a ONE_ROUND <<<"$SERVERS"
[ ${#ONE_ROUND[@]} -ge 1 ] || die "--server needs at least one server"
case "$ROUNDS" in
'' | *[!0-9]* | 0) die "ROUNDS must be a positive number" ;;
esac
case "$SCENARIO" in
login | idle | chat | roster | muc | upload | roster-login | offline-queue) ;;
*) die "scenario must be login, idle, chat, roster, muc, upload, roster-login or offline-queue" ;;
esac
for s in "${ONE_ROUND[@]}"; do
	case "$s" in
	prosody | xmppd) ;;
	relay)
		case "$SCENARIO" in
		login | idle | chat) ;;
		*) die "the relay supports login, idle and chat only" ;;
		esac
		;;
	*) die "servers are prosody, xmppd and relay (or both), not '$s'" ;;
	esac
done
LIST=()
for ((r = 0; r < ROUNDS; r++)); do
	LIST+=("${ONE_ROUND[@]}")
done

# Value of option $1 in the scenario arguments, if present.
arg_value() {
	local i
	for ((i = 0; i < ${#ARGS[@]}; i++)); do
		case "${ARGS[$i]}" in
		"$1") echo "${ARGS[$((i + 1))]:-}" && return 0 ;;
		"$1"=*) echo "${ARGS[$i]#*=}" && return 0 ;;
		esac
	done
	return 1
}

if [ -z "${USERS:-}" ]; then
	if u=$(arg_value --users); then
		USERS=$u
	elif p=$(arg_value --pairs); then
		USERS=$((2 * p))
	elif o=$(arg_value --occupants); then
		USERS=$o
	elif [ "$SCENARIO" = upload ]; then
		USERS=1
	elif [ "$SCENARIO" = roster-login ]; then
		# The hub and its contacts.
		USERS=$(($(arg_value --contacts || echo 1000) + 1))
	elif [ "$SCENARIO" = offline-queue ]; then
		USERS=2
	else
		USERS=1000
	fi
fi
export USERS

# The offline queue must hold the scenario's messages; a session's own backlog at login
# must hold the offline quota plus the pending subscriptions (500 by default).
if [ "$SCENARIO" = offline-queue ] && [ -z "${OFFLINE_QUOTA:-}" ]; then
	OFFLINE_QUOTA=$(arg_value --messages || echo 10000)
fi
LIMITS_EXTRA=
if [ -n "${OFFLINE_QUOTA:-}" ]; then
	backlog=$((OFFLINE_QUOTA + 500 > 20000 ? OFFLINE_QUOTA + 500 : 20000))
	LIMITS_EXTRA="offline_quota = $OFFLINE_QUOTA
session_backlog_len = $backlog"
fi

STAMP=$(date +%Y%m%d-%H%M%S)
RESULTS_DIR=${RESULTS_DIR:-/tmp/xmppd-bench/results/$STAMP-$SCENARIO}
mkdir -p "$RESULTS_DIR"

log "building (release)"
(cd "$ROOT" && cargo build --release -q -p xmppd-bench)
case ",$SERVERS," in
*,xmppd,*)
	[ -n "$XMPPD_GIVEN" ] || (cd "$ROOT" && cargo build --release -q --bin xmppd)
	;;
esac

# ----------------------------------------------------------------------- xmppd

# Only when asked for: builds before [tls] existed refuse the key (XMPPD=).
tls_section() {
	if [ -n "${TLS_TICKETS:-}" ]; then
		printf '[tls]\nsession_tickets = %s\n' "$TLS_TICKETS"
	fi
}

# The server certificate (xmppd's and the relay's): sets CRT and KEY, made once.
make_cert() {
	mkdir -p "$XMPPD_DIR/certs"
	# Named for what it covers: the vhost and its services (xmppd check wants each named).
	local kind=${CERT_KEY:-ec} newkey
	case "$kind" in
	# Same kind of certificate as the Prosody side (ECDSA P-256).
	ec) newkey=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1) ;;
	rsa) newkey=(-newkey rsa:2048) ;;
	*) die "CERT_KEY must be ec or rsa" ;;
	esac
	CRT=$XMPPD_DIR/certs/localhost-services.crt KEY=$XMPPD_DIR/certs/localhost-services.key
	if [ "$kind" = rsa ]; then
		CRT=$XMPPD_DIR/certs/localhost-services-rsa.crt KEY=$XMPPD_DIR/certs/localhost-services-rsa.key
	fi
	if [ ! -f "$CRT" ]; then
		openssl req -x509 "${newkey[@]}" -nodes -days 3650 \
			-subj "/CN=localhost" \
			-addext "subjectAltName=DNS:localhost,DNS:conference.localhost,DNS:upload.localhost,DNS:pubsub.localhost" \
			-keyout "$KEY" -out "$CRT" >/dev/null 2>&1
	fi
}

# Waits until 127.0.0.1:$2 accepts connections from process $1 (name $3, log $4).
wait_port() {
	local pid=$1 port=$2 name=$3 logf=$4 n=0
	until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
		n=$((n + 1))
		if [ $n -gt 300 ] || ! kill -0 "$pid" 2>/dev/null; then
			tail -n 20 "$logf" >&2 || true
			die "$name failed to start; see $logf"
		fi
		sleep 0.1
	done
}

XMPPD_PID=
xmppd_start() {
	local cfg=$XMPPD_DIR/xmppd.toml
	rm -rf "$XMPPD_DIR/data"
	mkdir -p "$XMPPD_DIR/data"
	if [ -n "${XMPPD_SEED_DB:-}" ]; then
		log "xmppd: starting from a copy of $XMPPD_SEED_DB"
		cp -a "$XMPPD_SEED_DB" "$XMPPD_DIR/data/db"
		# The copy's writeback is not the server's work.
		sync
	fi
	make_cert
	local crt=$CRT key=$KEY
	cat >"$cfg" <<EOF
# Generated by bench/run.sh: xmppd as a c2s benchmark target.
data_dir = "$XMPPD_DIR/data"
log_level = "warn"

[[vhost]]
domain = "localhost"
certificate = "$crt"
key = "$key"

[[listener]]
kind = "c2s"
address = "127.0.0.1:$XMPPD_PORT"
tls = "starttls"

[[listener]]
kind = "c2s"
address = "127.0.0.1:$((XMPPD_PORT + 1))"
tls = "direct_tls"

# HTTPS for the upload scenario (XEP-0363 slots point here).
[[listener]]
kind = "http"
address = "127.0.0.1:$((XMPPD_PORT + 2))"
tls = "direct_tls"

$(tls_section)
[limits]
# Every benchmark connection comes from loopback.
connections_per_ip = 100000
max_connections = 100000
handshake_timeout_secs = 120
$LIMITS_EXTRA

[c2s]
require_tls = true
allow_plain = true
scram_iterations = 10000

[storage]
backend = "sled"
sync_writes = ${SYNC_WRITES:-true}
archive_partition_mb = ${ARCHIVE_PARTITION_MB:-32}

[archive]
default_policy = "${ARCHIVE:-always}"

[muc]
# The room of the muc scenario: everyone may send as fast as the server goes.
max_occupants = 100000
messages_per_sec = 1000000
message_burst = 1000000
archive = ${MUC_ARCHIVE:-true}
EOF
	# The configuration and certificate; DNS is not this loopback setup's.
	"$XMPPD" check --offline --config "$cfg" >/dev/null
	# All accounts in one `xmppd import users` (one database open, not one per account).
	log "xmppd: creating $USERS accounts"
	local users_file=$XMPPD_DIR/users.txt i
	for ((i = 1; i <= USERS; i++)); do
		printf 'user%d@localhost:password\n' "$i"
	done >"$users_file"
	"$XMPPD" import --config "$cfg" users "$users_file" >/dev/null
	taskset -c "$SERVER_CPU" "$XMPPD" serve --config "$cfg" >"$XMPPD_DIR/xmppd.log" 2>&1 &
	XMPPD_PID=$!
	wait_port "$XMPPD_PID" "$XMPPD_PORT" xmppd "$XMPPD_DIR/xmppd.log"
	log "xmppd running: pid $XMPPD_PID, c2s 127.0.0.1:$XMPPD_PORT, core $SERVER_CPU"
}

# Stops the process whose pid is in variable $1 (TERM, then KILL after 10 s).
stop_pid() {
	local pid=${!1}
	if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
		kill "$pid"
		local n=0
		while kill -0 "$pid" 2>/dev/null; do
			n=$((n + 1))
			if [ $n -gt 100 ]; then kill -9 "$pid" 2>/dev/null || true; fi
			sleep 0.1
		done
	fi
	printf -v "$1" '%s' ''
}

xmppd_stop() { stop_pid XMPPD_PID; }

# ----------------------------------------------------------------------- relay

# The floor: `xmppd-bench relay` with xmppd's certificate and ticket setting. Any
# account with password `password` may log in, so it needs no accounts.
RELAY_PID=
relay_start() {
	make_cert
	local tickets=()
	[ -z "${TLS_TICKETS:-}" ] || tickets=(--tickets "$TLS_TICKETS")
	taskset -c "$SERVER_CPU" "$BENCH" --port "$RELAY_PORT" relay --cert "$CRT" --key "$KEY" \
		"${tickets[@]}" >"$XMPPD_DIR/relay.log" 2>&1 &
	RELAY_PID=$!
	wait_port "$RELAY_PID" "$RELAY_PORT" relay "$XMPPD_DIR/relay.log"
	log "relay running: pid $RELAY_PID, 127.0.0.1:$RELAY_PORT, core $SERVER_CPU"
}

relay_stop() { stop_pid RELAY_PID; }

cleanup() {
	xmppd_stop
	relay_stop
	"$HERE/prosody-setup.sh" stop >/dev/null 2>&1 || true
}
trap cleanup EXIT

# ------------------------------------------------------------------------- run

run_one() {
	local server=$1 port pid
	case "$server" in
	prosody)
		# A fresh instance: fresh accounts, no leftovers from an earlier run.
		"$HERE/prosody-setup.sh" stop
		CPU=$SERVER_CPU "$HERE/prosody-setup.sh" start
		# shellcheck disable=SC1091
		. "$PROSODY_DIR/env"
		port=$PORT pid=$PID
		;;
	xmppd)
		xmppd_start
		port=$XMPPD_PORT pid=$XMPPD_PID
		;;
	relay)
		mkdir -p "$XMPPD_DIR"
		relay_start
		port=$RELAY_PORT pid=$RELAY_PID
		;;
	esac
	local gen=(taskset -c "$GEN_CPU" "$BENCH" --port "$port")
	# shellcheck disable=SC2206
	gen+=(${GEN_ARGS:-})
	local extra=()
	case "$SCENARIO" in
	roster)
		local contacts
		contacts=$(arg_value --contacts) || die "roster needs --contacts"
		log "$server: setup-roster --users $USERS --contacts $contacts"
		"${gen[@]}" setup-roster --users "$USERS" --contacts "$contacts" >"$RESULTS_DIR/$server-setup-roster.txt"
		;;
	roster-login)
		log "$server: setup-star --contacts $((USERS - 1))"
		"${gen[@]}" setup-star --contacts "$((USERS - 1))" >"$RESULTS_DIR/$server-setup-star.txt"
		;;
	esac
	arg_value --server-pid >/dev/null || extra+=(--server-pid "$pid")
	log "$server: $SCENARIO ${ARGS[*]} ${extra[*]}"
	# A failed run (exit 3: figures printed, but something was lost) still counts.
	"${gen[@]}" "$SCENARIO" "${ARGS[@]}" "${extra[@]}" | tee "$RESULTS_DIR/$2.txt" || FAILED=yes
	case "$server" in
	prosody) "$HERE/prosody-setup.sh" stop ;;
	xmppd) xmppd_stop ;;
	relay) relay_stop ;;
	esac
}

# Outputs are <server>.txt, or <server>-<round>.txt with ROUNDS > 1.
OUTS=()
FAILED=
i=0
for s in "${LIST[@]}"; do
	name=$s
	[ "$ROUNDS" -eq 1 ] || name=$s-$((i / ${#ONE_ROUND[@]} + 1))
	run_one "$s" "$name"
	OUTS+=("$RESULTS_DIR/$name.txt")
	i=$((i + 1))
done

if [ ${#ONE_ROUND[@]} -eq 2 ] && [ "$ROUNDS" -eq 1 ]; then
	echo
	"$BENCH" compare --label-a "${ONE_ROUND[0]}" --label-b "${ONE_ROUND[1]}" "${OUTS[@]}" || true
fi
if [ ${#LIST[@]} -gt 1 ]; then
	echo
	"$BENCH" summary "${OUTS[@]}" || true
fi
[ -z "$FAILED" ] || log "some runs failed (see above)"
log "outputs in $RESULTS_DIR"
[ -z "$FAILED" ] || exit 3
