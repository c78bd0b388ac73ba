#!/usr/bin/env bash
# The kernel programs' own cost, alone and quickly (about 30 s a run instead of a whole bench):
# runs the `kernel_cost` test (3000 short connections through a ClusterIP with redirection on,
# then 3000 requests on 4 kept-alive connections; BPF run statistics on, in its own cgroup and
# network namespaces) and prints each program's ns per run with the 1-min load average.
#
#   scripts/kernel-cost.sh [-n ROUNDS] [OBJECT[@VAR=value...]...]
#
# With eBPF objects (e.g. a copy of target/bpf/meshpath.bpf.o before a change and the one after),
# each round runs every object once, in turn, through the agent's `--bpf-object`
# (MESHPATH_BPF_OBJECT): interleaved, so load from other work on the machine falls on all of them
# alike. `embedded` names the agent's own object; `@VAR=value` sets agent settings by their
# environment names for that entry (e.g. `embedded@MESHPATH_TCP_METRICS=false`). Without
# arguments, the embedded object. Needs root and built bins (`cargo build
# --workspace --bins`); builds the test binary.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=3
if [[ ${1:-} == -n ]]; then
	rounds=$2
	shift 2
fi
objects=("$@")
[[ ${#objects[@]} -gt 0 ]] || objects=(embedded)
bin=$(cargo test -p meshpath-tests --test kernel_cost --no-run --message-format=json 2>/dev/null |
	sed -n 's/.*"executable":"\([^"]*kernel_cost[^"]*\)".*/\1/p' | tail -1)
[[ -x $bin ]] || {
	echo "kernel-cost: could not build the kernel_cost test" >&2
	exit 1
}
export MESHPATH_BIN=${MESHPATH_BIN:-$PWD/target/debug/meshpath}
export MP_TESTPOD_BIN=${MP_TESTPOD_BIN:-$PWD/target/debug/mp-testpod}
for ((r = 1; r <= rounds; r++)); do
	for spec in "${objects[@]}"; do
		# OBJECT[@VAR=value...]: agent settings by environment, e.g. @MESHPATH_TCP_METRICS=false.
		IFS=@ read -r -a parts <<<"$spec"
		obj=${parts[0]}
		if [[ $obj == embedded ]]; then
			vars=(-u MESHPATH_BPF_OBJECT) # env's options come before its assignments
		else
			vars=("MESHPATH_BPF_OBJECT=$(realpath "$obj")")
		fi
		vars+=("${parts[@]:1}")
		load=$(cut -d' ' -f1 /proc/loadavg)
		out=$(env "${vars[@]}" "$bin" --nocapture 2>&1) || {
			echo "$out" | tail -30
			exit 1
		}
		echo "round $r $spec load $load"
		echo "$out" | grep -E "^(RESULT|EVENTS|KEEPALIVE)" | sed -E "s/^(RESULT|EVENTS) /  /; s/^KEEPALIVE /  kept alive: /"
	done
done
