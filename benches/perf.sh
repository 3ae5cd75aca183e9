#!/usr/bin/env bash
# The performance figures of the README, in one run on this machine:
#  - a generated capture of the issue's shape (20,000 users registering and refreshing, 100,000
#    calls through a record-routing proxy with 407 challenges, retransmissions and every outcome,
#    20,000 scanner attempts: about 1.65 million SIP messages, 780 MB);
#  - `cat` of it (the floor), `siptap replay` with 1 and 2 threads, `tshark -z sip,stat`: wall
#    time, messages/s, MB/s, peak RSS, and the ratios between them;
#  - state memory: peak-RSS differences between captures that differ only in how many
#    registrations (UDP; and with 20% of phones on TCP) or open call legs they leave;
#  - with PGO=1: the replay rows again for the profile-guided build of packaging/pgo.sh (about
#    10 minutes more; needs `rustup component add llvm-tools`);
#  - with LIVE=1 (root): the live capture figures of benches/live/capture.sh.
#   benches/perf.sh                    (WORK=DIR keeps the generated captures there; TSHARK=0 skips tshark)
# tshark runs on the first 330,000 frames only (its SIP statistics slow down as the file grows).
# Needs a release build's tools (cargo), GNU time (/usr/bin/time), tshark for the comparison.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
work=${WORK:-$(mktemp -d)}
mkdir -p "$work"
cd "$root"
cargo build -q --release --bin siptap --example gencap
bin=$root/target/release/siptap
gen=$root/target/release/examples/gencap
cfg=$root/config.toml.example

make() { # make NAME ARGS...: generates once
	local f=$work/$1.pcap
	shift
	[ -s "$f" ] || "$gen" "$@" "$f" 2>&1 | sed 's/^/  generated /'
}
make big --users 20000 --calls 100000 --scanners 20000 --duration 3600 --refresh 1800
big=$work/big.pcap
msgs=$("$bin" replay --threads 1 --stats --config "$cfg" "$big" 2>&1 >/dev/null | awk '$1 == "sip_messages" {print $2}')
mb=$(stat -L -c %s "$big" | awk '{printf "%.1f", $1 / 1e6}')
echo "capture: $msgs SIP messages, $mb MB"

# timed COMMAND...: wall seconds and peak RSS (kB) of one run
timed() {
	/usr/bin/time -f "%e %M" -o "$work/time.out" "$@" >/dev/null 2>"$work/stderr.out" || { cat "$work/stderr.out" >&2; return 1; }
	cat "$work/time.out"
}
# best of three (the machine is shared and noisy): prints "seconds rss"
best() {
	local b="" r
	for _ in 1 2 3; do
		r=$(timed "$@")
		if [ -z "$b" ] || awk -v a="${r% *}" -v b="${b% *}" 'BEGIN {exit !(a < b)}'; then b=$r; fi
	done
	echo "$b"
}
cat_r=$(best cat "$big")
t1=$(best "$bin" replay --threads 1 --config "$cfg" "$big")
t2=$(best "$bin" replay --threads 2 --config "$cfg" "$big")
if [ "${PGO:-0}" = 1 ]; then
	"$root/packaging/pgo.sh"
	pgo=$root/target/release-pgo/siptap
	p1=$(best "$pgo" replay --threads 1 --config "$cfg" "$big")
	p2=$(best "$pgo" replay --threads 2 --config "$cfg" "$big")
fi
row() { # row LABEL "SECONDS RSS"
	awk -v l="$1" -v s="${2% *}" -v r="${2#* }" -v n="$msgs" -v mb="$mb" 'BEGIN {
		printf "  %-28s %7.2f s %11.0f msg/s %8.1f MB/s   peak RSS %7.1f MB\n", l, s, n / s, mb / s, r / 1024 }'
}
echo "throughput (best of 3):"
row "cat" "$cat_r"
row "siptap replay --threads 1" "$t1"
row "siptap replay --threads 2" "$t2"
awk -v c="${cat_r% *}" -v a="${t1% *}" -v b="${t2% *}" 'BEGIN {
	printf "ratios: 2 threads / 1 thread %.2fx; 1 thread is %.1fx the time of cat\n", a / b, a / c
}'
if [ "${PGO:-0}" = 1 ]; then
	row "PGO build, --threads 1" "$p1"
	row "PGO build, --threads 2" "$p2"
	awk -v c="${cat_r% *}" -v a="${p1% *}" -v b="${p2% *}" -v x="${t1% *}" 'BEGIN {
		printf "PGO ratios: 2 threads / 1 thread %.2fx; 1 thread is %.1fx the time of cat, %.3f of the plain build'"'"'s\n", a / b, a / c, a / x
	}'
fi
# tshark's SIP statistics slow down as the capture grows (on this machine it had not finished the
# whole file after 30 minutes): compared on the first 330,000 frames, both tools on the same file
if [ "${TSHARK:-1}" != 0 ] && command -v tshark >/dev/null && command -v editcap >/dev/null; then
	part=$work/part.pcap
	[ -s "$part" ] || editcap -r "$big" "$part" 1-330000
	pmsgs=$("$bin" replay --threads 1 --stats --config "$cfg" "$part" 2>&1 >/dev/null | awk '$1 == "sip_messages" {print $2}')
	ps_=$(best "$bin" replay --threads 1 --config "$cfg" "$part")
	ts=$(timed tshark -n -q -r "$part" -z sip,stat)
	echo "first 330,000 frames ($pmsgs SIP messages):"
	for r in "siptap replay --threads 1|$ps_" "tshark -z sip,stat|$ts"; do
		awk -v l="${r%%|*}" -v x="${r#*|}" -v n="$pmsgs" 'BEGIN { split(x, v, " ")
			printf "  %-28s %7.2f s %11.0f msg/s   peak RSS %7.1f MB\n", l, v[1], n / v[1], v[2] / 1024 }'
	done
	awk -v a="${ps_% *}" -v t="${ts% *}" 'BEGIN { printf "  siptap is %.0fx tshark\n", t / a }'
fi

echo "state memory (peak RSS differences, --threads 1):"
make u20k --users 20000 --calls 0 --duration 600 --tcp 0
make u200k --users 200000 --calls 0 --duration 600 --tcp 0
make t20k --users 20000 --calls 0 --duration 600 --tcp 20
make t200k --users 200000 --calls 0 --duration 600 --tcp 20
make o10k --users 2000 --calls 10000 --duration 900 --tcp 0 --open 100
make o100k --users 2000 --calls 100000 --duration 900 --tcp 0 --open 100
rss() { timed "$bin" replay --threads 1 --config "$cfg" "$work/$1.pcap" | awk '{print $2}'; }
per() { # per LABEL SMALL LARGE UNITS: bytes per unit between the two
	local a b
	a=$(rss "$2")
	b=$(rss "$3")
	awk -v l="$1" -v a="$a" -v b="$b" -v n="$4" 'BEGIN {
		printf "  %-44s %5.0f bytes (%.1f -> %.1f MB)\n", l, (b - a) * 1024 / n, a / 1024, b / 1024 }'
}
per "per registration (UDP, 20k -> 200k users)" u20k u200k 180000
per "per registration (20% on TCP, 20k -> 200k)" t20k t200k 180000
per "per open call leg (20k -> 200k open legs)" o10k o100k 180000
echo "  (the state store's cache, limits.store_cache_mib = 4 MiB, fills in both runs of a pair: part of each"
echo "   difference is that fixed cost)"

if [ "${LIVE:-0}" = 1 ]; then
	echo "live capture:"
	"$here/live/capture.sh" | sed 's/^/  /'
fi
