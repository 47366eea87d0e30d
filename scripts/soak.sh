#!/bin/sh
# Soak test (not run in CI): runs one tracer for N minutes under a steady load and prints, every
# 30 s, its resident memory, open file descriptors, CPU use and the lines it has written; at the
# end, its own accounting (events + dropped + unwritten = produced).
#
#   sudo scripts/soak.sh [TRACER] [MINUTES] [BINARY]       (defaults: syscalls 10 target/release/bpfstream)
#
# The load: a shell loop that runs `cat` on a small file every 10 ms (an exec, opens and a few
# dozen syscalls each time), so every tracer has a steady stream to follow. The tracer filters
# nothing: it also sees whatever else the machine does.
set -eu
tracer=${1:-syscalls}
minutes=${2:-10}
bin=${3:-target/release/bpfstream}
interval=30
out=$(mktemp /tmp/bpfstream-soak.XXXXXX)
err=$out.err
[ -x "$bin" ] || { echo "no $bin: cargo build --release first" >&2; exit 2; }

(while :; do cat /etc/hostname >/dev/null; sleep 0.01; done) &
load=$!
"$bin" "$tracer" >"$out" 2>"$err" &
pid=$!
trap 'kill $load 2>/dev/null; kill -9 $pid 2>/dev/null; rm -f "$out" "$err"' EXIT
ticks=$(getconf CLK_TCK)

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$pid/stat"; }

printf '%8s %10s %5s %8s %12s\n' "time(s)" "rss(KiB)" "fds" "cpu(%)" "lines"
last=$(cpu_ticks)
elapsed=0
end=$((minutes * 60))
while [ "$elapsed" -lt "$end" ]; do
	sleep "$interval"
	elapsed=$((elapsed + interval))
	now=$(cpu_ticks)
	rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status")
	fds=$(ls "/proc/$pid/fd" | wc -l)
	cpu=$(awk -v d=$((now - last)) -v t="$ticks" -v i="$interval" 'BEGIN { printf "%.1f", 100 * d / t / i }')
	lines=$(wc -l <"$out")
	printf '%8s %10s %5s %8s %12s\n' "$elapsed" "$rss" "$fds" "$cpu" "$lines"
	last=$now
done
kill -INT "$pid"
status=0
wait "$pid" || status=$?
echo "exit status $status"
grep -v '^Tracing' "$err" || true
