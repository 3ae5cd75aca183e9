#!/usr/bin/env bash
# Live capture cost: a generated capture replayed with tcpreplay onto a veth pair in a network
# namespace of its own, at fixed rates, while `siptap run` captures the other end (default
# buffer, default config). For each rate: packets sent, received, dropped by the kernel, CPU
# microseconds per packet while the packets come, and from start to exit (with what the stop
# does: the state journal's fold); against `siptap replay --threads 1` of the same file (run
# just before each live run), straight through and paced like the rate (a pause after each
# batch's worth of frames, as long as the batch takes to arrive: the daemon's core sleeps between
# batches too, and wakes to caches that went cold), and, with the daemon on two threads
# (`run.threads`, default 2), against `replay --threads 2` straight through; the CPU per packet
# of each of the daemon's threads (capture, decode, core); and the idle RSS. With BUSY=1 the runs
# repeat with a CPU hog on every core. With ROUNDS=N every rate runs N times, and the medians of
# the rounds close it.
#   sudo benches/live/capture.sh      (RATES="10000 25000 50000" PACKETS=300000 BUFFER_MIB=N
#                                      THREADS=1|2 ROUNDS=N PACE=old to change)
# Needs root, tcpreplay, iproute2, curl and a release build (cargo build --release).
set -euo pipefail
if [ -z "${CAP_IN_NS:-}" ]; then
	exec unshare -n env CAP_IN_NS=1 "$0" "$@"
fi
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=${SIPTAP:-$root/target/release/siptap}
rates=${RATES:-10000 25000 50000}
packets=${PACKETS:-300000}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; sleep 0.5; rm -rf "$work"' EXIT
. "$here/veth.sh"

hz=$(getconf CLK_TCK)
cpu_of() { awk -v hz="$hz" '{printf "%.3f", ($14 + $15) / hz}' "/proc/$1/stat"; }
rss_of() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
# threads_cpu PID: per thread "tid name user system", in seconds (spaces in names made underscores)
threads_cpu() {
	local t
	for t in /proc/"$1"/task/*; do
		{ tr ' ' _ <"$t/comm"; sed 's/.*) //' "$t/stat"; } 2>/dev/null |
			awk -v hz="$hz" -v tid="${t##*/}" 'NR == 1 {name = $0} NR == 2 {printf "%s %s %.3f %.3f\n", tid, name, $12 / hz, $13 / hz}'
	done
}
metric() { curl -sf http://127.0.0.1:19091/metrics | awk -v m="$1" 'index($1, m) == 1 {s += $2} END {print s + 0}'; }

# replay_cpu_us [ARGS...]: us of CPU (user + system) per packet of replay of the capture, on one
# thread (RT=2: two)
replay_cpu_us() {
	/usr/bin/time -f "%U %S" -o "$work/replay.time" "${REPLAY_BIN:-$bin}" replay --threads "${RT:-1}" "$@" \
		--config "$root/config.toml.example" "$cap" >/dev/null
	awk -v n="$n" '{printf "%.2f", ($1 + $2) / n * 1e6}' "$work/replay.time"
}
# the same packets through replay, in this run: the baseline
replay_us=$(replay_cpu_us)
echo "capture: $n packets; siptap replay --threads 1: $replay_us us of CPU per packet"
# the daemon decodes on a thread of its own unless THREADS=1: replay split the same way, too
replay2_us=0
if [ "${THREADS:-2}" != 1 ]; then
	replay2_us=$(RT=2 replay_cpu_us)
	echo "siptap replay --threads 2: $replay2_us us of CPU per packet"
fi

cat >"$work/siptap.toml" <<EOF
sip_servers = ["127.0.0.10:5060"]
[run]
interfaces = ["v1"]
${BUFFER_MIB:+buffer_mib = $BUFFER_MIB}
${THREADS:+threads = $THREADS}
state_dir = "$work/state"
metrics_listen = "127.0.0.1:19091"
jsonl_path = "$work/events.jsonl"
[tenants.lab]
domains = ["lab.example"]
EOF

# replay paced like a live capture at RATE: the daemon's core gets a batch every 50 ms, or every
# 200 ms once 50 ms bring 256 frames or more, or sooner when 16,384 frames or 4 MiB are held
# (src/daemon/live.rs; PACE=old: 50 ms, 4,096 frames, 1 MiB, before the batch-hold round); replay
# pauses as long after as many frames. Prints us of CPU per packet.
frame_bytes=$(( $(stat -L -c %s "$cap") / n ))
paced_us() { # paced_us RATE
	local every ms
	every=$(awk -v r="$1" -v fb="$frame_bytes" -v old="${PACE:-}" 'BEGIN {
		if (old == "old") { e = r / 20; fmax = 4096; bmax = 1048576 }
		else { e = (r / 20 >= 256 ? r / 5 : r / 20); fmax = 16384; bmax = 4194304 }
		if (e > fmax) e = fmax; if (e > bmax / fb) e = bmax / fb; printf "%d", (e < 1 ? 1 : e) }')
	ms=$(awk -v r="$1" -v e="$every" 'BEGIN { printf "%d", 1000 * e / r + 0.5 }')
	replay_cpu_us --pause-every "$every:$ms"
}

one_run() { # one_run RATE LABEL
	rm -rf "$work/state" "$work/events.jsonl"
	# the baseline again, just before: this host's speed drifts by tens of percent within minutes,
	# so each live run is set against a replay taken next to it
	local replay_us
	replay_us=$(replay_cpu_us)
	# (under time(1): the CPU of the whole run, start to exit, with the state's fold at the stop)
	/usr/bin/time -f "%U %S" -o "$work/daemon.time" "$bin" run --allow-root --config "$work/siptap.toml" 2>"$work/siptap.log" &
	local tpid=$! pid=
	for _ in $(seq 50); do pid=$(pgrep -P $tpid) && break; sleep 0.1; done
	for _ in $(seq 50); do curl -sf http://127.0.0.1:19091/health >/dev/null && break; sleep 0.2; done
	sleep 2
	local idle_rss cpu0 cpu1 got drops
	idle_rss=$(rss_of $pid)
	cpu0=$(cpu_of $pid)
	threads_cpu $pid >"$work/threads0"
	tcpreplay -q -i v0 --pps="$1" "$cap" >"$work/tcpreplay.out" 2>&1
	sleep 3
	cpu1=$(cpu_of $pid)
	threads_cpu $pid >"$work/threads1"
	got=$(metric siptap_capture_packets_total)
	drops=$(metric 'siptap_capture_kernel_drops_total')
	local rss
	rss=$(rss_of $pid)
	kill -TERM $pid
	wait $tpid || true
	local whole paced
	whole=$(awk '{print $1 + $2}' "$work/daemon.time")
	paced=$(paced_us "$1")
	awk -v r="$1" -v l="$2" -v n="$n" -v got="$got" -v d="$drops" -v c0="$cpu0" -v c1="$cpu1" -v base="$replay_us" \
		-v idle="$idle_rss" -v rss="$rss" -v whole="$whole" -v paced="$paced" -v two="$replay2_us" 'BEGIN {
		g = (got > 0 ? got : 1)
		us = (c1 - c0) / g * 1e6
		all = whole / g * 1e6
		printf "%-5s %7d/s sent %7d received %7d kernel drops %5d  %6.2f us/packet (%.2fx replay, %.2f us, just before; start to exit %.2f us, %.2fx)  replay paced so %.2f us (%.2fx)  idle RSS %.1f MiB, after %.1f MiB\n",
			l, r, n, got, d, us, us / base, base, all, all / base, paced, us / paced, idle / 1024, rss / 1024
		printf "%s %d %.4f %.4f %.4f\n", l, r, us, us / base, us / paced >> ENVIRON["work"] "/ratios"
		if (two > 0) printf "        against replay --threads 2 straight through: %.2fx\n", us / two
	}'
	# where it went, by thread name (threads with less than 0.01 us per packet left out)
	awk -v g="${got:-1}" 'NR == FNR {u0[$1] = $3; s0[$1] = $4; next} {u[$2] += $3 - u0[$1]; s[$2] += $4 - s0[$1]} END {
		printf "        by thread, us/packet (user + system):"
		for (k in u) if ((u[k] + s[k]) / g * 1e6 >= 0.01) printf "  %s %.2f (%.2f + %.2f)", k, (u[k] + s[k]) / g * 1e6, u[k] / g * 1e6, s[k] / g * 1e6
		printf "\n"
	}' "$work/threads0" "$work/threads1"
}
# ROUNDS=N: each rate N times (alternating), then the medians per rate
rounds=${ROUNDS:-1}
export work
summary() { # summary LABEL: medians of the rounds, per rate
	[ "$rounds" -gt 1 ] || return 0
	local r
	for r in $rates; do
		awk -v l="$1" -v r="$r" 'BEGIN {n = 0} $1 == l && $2 == r {u[n] = $3; a[n] = $4; p[n] = $5; n++}
			function med(v,   i, j, t) { for (i = 0; i < n; i++) for (j = i + 1; j < n; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
				return n % 2 ? v[(n - 1) / 2] : (v[n / 2 - 1] + v[n / 2]) / 2 }
			END { if (n) printf "%-5s %7d/s, medians of %d rounds: %.2f us/packet, %.2fx replay straight through (each against the replay just before it), %.2fx replay paced so\n", l, r, n, med(u), med(a), med(p) }' "$work/ratios"
	done
}
for _ in $(seq "$rounds"); do
	for r in $rates; do one_run "$r" quiet; done
done
summary quiet
if [ -n "${BUSY:-}" ]; then
	for _ in $(seq "$(nproc)"); do (while :; do :; done) & done
	for _ in $(seq "$rounds"); do
		for r in $rates; do one_run "$r" busy; done
	done
	summary busy
fi
