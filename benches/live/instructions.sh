#!/usr/bin/env bash
# The daemon's own work per packet, apart from cold caches and a busy host: `siptap run` under
# callgrind capturing a generated capture sent with tcpreplay onto a veth pair in a network
# namespace of its own (slowly: callgrind runs it about 50 times slower), its instruction count
# taken over the packets' arrival only; against `siptap replay --threads 1` of the same packets
# under callgrind. Instruction counts do not change with the load on the machine, so this tells
# what the daemon does more than replay (the state saved every second, the report, libpcap),
# where benches/live/capture.sh measures the CPU time, cold caches included.
#   sudo benches/live/instructions.sh        (RATE=4000 PACKETS=300000 to change; TOP=N items)
# Needs root, valgrind, tcpreplay, tcpdump, iproute2, curl and a release build with line tables
# for the item names (CARGO_PROFILE_RELEASE_DEBUG=line-tables-only cargo build --release).
set -euo pipefail
if [ -z "${CAP_IN_NS:-}" ]; then
	exec unshare -n env CAP_IN_NS=1 "$0" "$@"
fi
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=${SIPTAP:-$root/target/release/siptap}
rate=${RATE:-4000}
packets=${PACKETS:-300000}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; sleep 0.5; rm -rf "$work"' EXIT
# the capture of benches/live/capture.sh, on the same veth pair
. "$here/veth.sh"

cat >"$work/siptap.toml" <<EOT
sip_servers = ["127.0.0.10:5060"]
[run]
interfaces = ["v1"]
state_dir = "$work/state"
metrics_listen = "127.0.0.1:19092"
jsonl_path = "$work/events.jsonl"
[tenants.lab]
domains = ["lab.example"]
EOT
metric() { curl -sf http://127.0.0.1:19092/metrics | awk -v m="$1" 'index($1, m) == 1 {s += $2} END {print s + 0}'; }

# the daemon: counters zeroed once it is up, dumped when the packets have come
valgrind --tool=callgrind --callgrind-out-file="$work/run.cg" "$bin" run --allow-root --config "$work/siptap.toml" \
	2>"$work/run.log" &
pid=$!
for _ in $(seq 300); do curl -sf http://127.0.0.1:19092/health >/dev/null && break; sleep 0.2; done
sleep 2
callgrind_control -z $pid >/dev/null
got0=$(metric siptap_capture_packets_total)
tcpreplay -q -i v0 --pps="$rate" "$cap" >/dev/null 2>&1
sleep 3
got=$(( $(metric siptap_capture_packets_total) - got0 ))
drops=$(metric siptap_capture_kernel_drops_total)
callgrind_control -d $pid >/dev/null
kill -TERM $pid
wait $pid || true
run_cg=$(ls "$work"/run.cg.* | sort | tail -1)

valgrind --tool=callgrind --callgrind-out-file="$work/replay.cg" "$bin" replay --threads 1 \
	--config "$root/config.toml.example" "$cap" >/dev/null 2>"$work/replay.log"

total() { awk '/^summary:/ {print $2}' "$1"; }
run_i=$(total "$run_cg")
replay_i=$(total "$work/replay.cg")
awk -v n="$n" -v got="$got" -v d="$drops" -v r="$rate" -v a="$run_i" -v b="$replay_i" 'BEGIN {
	printf "capture: %d packets sent at %d/s; the daemon received %d (kernel drops %d)\n", n, r, got, d
	printf "siptap run      %6.0f instructions per packet received\n", a / got
	printf "siptap replay   %6.0f instructions per packet (one thread, no state directory)\n", b / n
	printf "run / replay    %6.2fx\n", (a / got) / (b / n)
}'
# where they go: inclusive instructions per packet of the main items, the daemon's beside replay's
python3 - "$run_cg" "$work/replay.cg" "$got" "$n" <<'PY'
import re, subprocess, sys
def items(path):
    out = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--auto=no", "--threshold=100", path],
                         capture_output=True, text=True).stdout
    m = {}
    for line in out.splitlines():
        g = re.match(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+(\S.*?)(?: \[.*\])?$", line)
        if g:
            name = re.sub(r"^.*?\.(rs|c|S|h):|^\?\?\?:", "", g.group(2))
            m[name] = max(m.get(name, 0), int(g.group(1).replace(",", "")))
    return m
run, replay = items(sys.argv[1]), items(sys.argv[2])
got, n = int(sys.argv[3]), int(sys.argv[4])
shown = [
    ("siptap::decode::Decoder::decode", "decoding and parsing into batches (as replay)"),
    ("siptap::pipeline::Back::apply", "state machines over the batches, their events out (as replay)"),
    ("siptap::sink::jsonl::append_line", "JSON lines"),
    (("siptap::daemon::run::{{closure}}", "siptap::cli::replay::replay::{{closure}}"),
     "per event: the JSON line (and the daemon's counts, report, outbox)"),
    ("siptap::daemon::save_state", "the state saved every second"),
    ("siptap::state::snapshot::<impl siptap::state::tracker::Tracker>::delta_of", "  changed records encoded"),
    ("siptap::store::embedded::StateStore::write", "  the store's transaction"),
    ("siptap::store::embedded::fold", "    of which the journal folded into the tables"),
    ("pcap_dispatch", "libpcap's read of the ring, the copy into batches"),
]
for key, what in shown:
    (kr, kp) = key if isinstance(key, tuple) else (key, key)
    a, b = run.get(kr, 0) / got, replay.get(kp, 0) / n
    print(f"  {a:7.0f}  (replay {b:5.0f})  {what}")
PY
