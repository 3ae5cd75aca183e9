# Sourced by the live benchmarks, inside their own network namespace, with `root`, `work` and
# `packets` set: loopback up, a veth pair v0 (tcpreplay sends) / v1 (siptap captures), and the
# capture to send in `cap` (CAPTURE=FILE, or the first `packets` frames of a generated one:
# registrations, calls of every outcome and a scanner, over UDP; tcpreplay sends frames as they
# are: TCP streams replay fine, but a veth pair has no reason to reorder them), its frame count
# in `n`.
ip link set lo up
ip link add v0 type veth peer name v1
ip link set v0 up
ip link set v1 up

cap=$work/live.pcap
if [ -n "${CAPTURE:-}" ]; then
	cap=$CAPTURE
else
	(cd "$root" && cargo run -q --release --example gencap -- --users 4000 --calls 24000 --scanners 4000 \
		--duration 900 --tcp 0 "$work/full.pcap")
	tcpdump -r "$work/full.pcap" -c "$packets" -w "$cap" 2>/dev/null
fi
n=$(tcpdump -r "$cap" -nn 2>/dev/null | wc -l)
