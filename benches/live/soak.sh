#!/usr/bin/env bash
# The live soak: `siptap run` capturing on loopback beside Kamailio under a constant load for an
# hour (200 users refreshing every 10 minutes, 6 calls a second of 1-20 s, every call through a
# 407 challenge), delivering to a fake Measurement Protocol server; siptap's RSS and CPU sampled
# every minute. Memory must be flat after warm-up.
#   sudo benches/live/soak.sh            (DURATION=3600 RATE=6 USERS=200 to change the load,
#                                          STORE_CACHE_MIB=4 the state and outbox caches)
# Needs root (capture, network namespace), kamailio, sip-tester (sipp), python3, curl, and a
# release build (cargo build --release). Runs in its own network namespace.
set -euo pipefail
if [ -z "${SOAK_IN_NS:-}" ]; then
	exec unshare -n env SOAK_IN_NS=1 "$0" "$@"
fi
ip link set lo up
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
lab=$root/fixtures/lab
bin=${SIPTAP:-$root/target/release/siptap}
duration=${DURATION:-3600}
rate=${RATE:-6}
users=${USERS:-200}
every=${EVERY:-60}
mods=$(dirname "$(dpkg -L kamailio | grep '/modules/tm.so$')")
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; sleep 1; rm -rf "$work"' EXIT

# the fake Measurement Protocol server: 204 to every POST, counting the events
cat >"$work/mp.py" <<'EOF'
import http.server, sys, signal
count = [0, 0]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        count[0] += 1
        count[1] += body.count(b'"name"')
        with open(sys.argv[2], "w") as f:
            f.write(f"{count[0]} {count[1]}\n")
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
EOF
python3 "$work/mp.py" 18080 "$work/mp.count" &
echo "0 0" >"$work/mp.count"

cat >"$work/siptap.toml" <<EOF
sip_servers = ["127.0.0.10:5060"]
[run]
interfaces = ["lo"]
state_dir = "$work/state"
metrics_listen = "127.0.0.1:19090"
[limits]
store_cache_mib = ${STORE_CACHE_MIB:-4}
[tenants.lab]
domains = ["lab.example"]
[tenants.lab.firebase]
app_id = "1:1234567890:android:0a1b2c3d4e5f"
api_secret_env = "SOAK_API_SECRET"
endpoint = "http://127.0.0.1:18080/mp/collect"
allow_insecure_endpoint = true
EOF
SOAK_API_SECRET=soak-secret "$bin" run --allow-root --config "$work/siptap.toml" 2>"$work/siptap.log" &
pid=$!
for _ in $(seq 50); do curl -sf http://127.0.0.1:19090/health >/dev/null && break; sleep 0.2; done

kamailio -f "$lab/kamailio.cfg" -L "$mods" -DD -E -Y "$work" -P "$work/k.pid" -A NO_PIKE >"$work/kamailio.log" 2>&1 &
sleep 1.5
K=127.0.0.10:5060
SIPP=(sipp -nostdin -trace_err -error_file "$work/sipp-errors.log")
# bob answers every call
"${SIPP[@]}" -m 1 -sf "$lab/sipp/register.xml" -s bob -au bob -ap secret -i 127.0.0.3 -p 5070 \
	-key contact "<sip:bob@127.0.0.3:5060>" -key ua "soak-callee/1.0" -key expires 86400 $K >/dev/null
"${SIPP[@]}" -sf "$lab/sipp/uas_answer.xml" -i 127.0.0.3 -p 5060 $K >/dev/null &
# the users: registration refreshes spread evenly (each user every 10 minutes), calls at RATE/s
{
	echo RANDOM
	for i in $(seq 0 $((users - 1))); do printf "soak%03d;[authentication username=soak%03d password=secret];%012d\n" "$i" "$i" "$i"; done
} >"$work/users.csv"
sed 's/^RANDOM/SEQUENTIAL/' "$work/users.csv" >"$work/users-seq.csv"
"${SIPP[@]}" -sf "$here/soak_register.xml" -inf "$work/users-seq.csv" -i 127.0.0.2 -p 5062 -r 50 -m "$users" $K >/dev/null || echo "some first registrations failed (see the sipp errors below)"
"${SIPP[@]}" -sf "$here/soak_register.xml" -inf "$work/users-seq.csv" -i 127.0.0.2 -p 5062 -r "$users" -rp 600000 $K >/dev/null &
"${SIPP[@]}" -sf "$here/soak_call.xml" -inf "$work/users.csv" -s bob -i 127.0.0.2 -p 5064 -r "$rate" -l 1000 $K >/dev/null &

hz=$(getconf CLK_TCK)
cpu() { awk -v hz="$hz" '{print ($14 + $15) / hz}' "/proc/$pid/stat"; }
rss() { awk '/VmRSS/ {print $2}' "/proc/$pid/status"; }
# anonymous (heap) and file-backed (the mapped state and outbox files) parts of the RSS
rss_split() { awk '/RssAnon/ {a = $2} /RssFile/ {f = $2} END {print a, f}' "/proc/$pid/status"; }
start_cpu=$(cpu)
printf '%6s %9s %9s %9s %9s %10s %10s\n' minute rss_kB anon_kB file_kB cpu_% derived delivered
t0=$(date +%s)
prev_cpu=$start_cpu
samples=()
while [ $(($(date +%s) - t0)) -lt "$duration" ]; do
	sleep "$every"
	now_cpu=$(cpu)
	pct=$(awk -v a="$prev_cpu" -v b="$now_cpu" -v s="$every" 'BEGIN {printf "%.2f", (b - a) / s * 100}')
	prev_cpu=$now_cpu
	derived=$(curl -sf http://127.0.0.1:19090/metrics | awk '/^siptap_events_total/ {s += $2} END {print s + 0}')
	r=$(rss)
	m=$(( ($(date +%s) - t0) / 60 ))
	read -r anon file < <(rss_split)
	printf '%6d %9d %9d %9d %9s %10s %10s\n' "$m" "$r" "$anon" "$file" "$pct" "$derived" "$(cut -d' ' -f2 "$work/mp.count")"
	samples+=("$m $r")
done
kill -TERM $pid
wait $pid || true
total_cpu=$(awk -v a="$start_cpu" -v b="$now_cpu" -v s="$duration" 'BEGIN {printf "%.2f", (b - a) / s * 100}')
printf '%s\n' "${samples[@]}" | awk -v cpu="$total_cpu" '
	{ m[NR] = $1; r[NR] = $2 }
	END {
		# warm-up: the first sixth of the run (registrations, caches, the outbox file)
		a = int(NR / 6) + 1
		if (NR - a < 2) { print "too short to judge growth"; exit }
		n = 0; sx = 0; sy = 0; sxx = 0; sxy = 0
		for (i = a; i <= NR; i++) { n++; sx += m[i]; sy += r[i]; sxx += m[i] * m[i]; sxy += m[i] * r[i] }
		slope = (n * sxy - sx * sy) / (n * sxx - sx * sx)
		printf "after warm-up (minute %d on): RSS %d -> %d kB, trend %+.1f kB/min; CPU %s%% of a core\n", m[a], r[a], r[NR], slope, cpu
		# the two database caches fill for about 50 minutes at this load, and the RSS then makes a
		# five-minute sawtooth in step with the fold of the state journal (every 300 saves): so also
		# the last third alone, as the lowest and highest RSS of each five samples
		b = NR - int(NR / 3) + 1
		if (NR - b < 9) exit
		line = ""
		for (i = b; i + 4 <= NR; i += 5) {
			lo = r[i]; hi = r[i]
			for (j = i; j < i + 5; j++) { if (r[j] < lo) lo = r[j]; if (r[j] > hi) hi = r[j] }
			line = line sprintf(" %d-%d", lo, hi)
		}
		printf "last third (minute %d on), RSS kB lowest-highest of each five samples:%s\n", m[b], line
	}'
echo "sipp errors: $(cat "$work/sipp-errors.log" 2>/dev/null | wc -l) lines; siptap log tail:"
tail -3 "$work/siptap.log"
