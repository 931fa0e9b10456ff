#!/usr/bin/env bash
# Run a glm-jax training job as N processes on this machine (jax.distributed over 127.0.0.1):
# the same multi-host code path as a TPU slice, for testing.
#
#   launch/local.sh -n 2 --config=configs/debug.py --workdir=/tmp/run [--devices_per_process=4] [--config.x=...]
#
# Each process gets `--devices_per_process` simulated CPU devices; their logs go to
# WORKDIR/logs/process_<i>.log, process 0's is also shown. Exits with the first failure's code.
set -euo pipefail

die() { echo "launch/local.sh: $*" >&2; exit 2; }
n="" workdir="" per=4
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    -n) n="${2:-}"; shift ;;
    -n=*|--processes=*) n="${1#*=}" ;;
    --devices_per_process=*) per="${1#*=}" ;;
    --workdir=*) workdir="${1#*=}"; args+=("$1") ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) args+=("$1") ;;
  esac
  shift
done
[[ "$n" =~ ^[1-9][0-9]*$ ]] || die "-n N (number of processes, >= 1) is required"
[[ "$per" =~ ^[1-9][0-9]*$ ]] || die "--devices_per_process must be a positive integer"
[ -n "$workdir" ] || die "--workdir is required"

python="${PYTHON:-python3}"
# The coordinator's port: free, and below the kernel's ephemeral range, where no outgoing
# connection can take it while the processes start (bind(0) would hand out an ephemeral one).
port=$("$python" -c '
import random, socket
try:
    low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
except OSError:
    low = 32768
for port in random.sample(range(max(1024, low - 12000), low), 200):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
    print(port)
    break
')
[ -n "$port" ] || die "no free port for the coordinator on 127.0.0.1"
mkdir -p "$workdir/logs"
pids=()
for ((i = 0; i < n; i++)); do
  XLA_FLAGS="--xla_force_host_platform_device_count=$per" JAX_PLATFORMS=cpu \
    "$python" -m glm_jax.train "${args[@]}" --distributed --coordinator_address="127.0.0.1:$port" \
    --num_processes="$n" --process_id="$i" >"$workdir/logs/process_$i.log" 2>&1 &
  pids+=($!)
done
trap 'kill "${pids[@]}" 2>/dev/null || true' INT TERM
tail -n +1 -f "$workdir/logs/process_0.log" --pid="${pids[0]}" &
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || { code=$?; [ "$status" = 0 ] && status=$code; }
done
wait
[ "$status" = 0 ] || echo "launch/local.sh: a process failed (exit $status); see $workdir/logs/" >&2
exit "$status"
