#!/usr/bin/env bash
# Run a glm-jax training job as N processes on this machine (jax.distributed over 127.0.0.1):
# the same multi-host code path as a TPU slice, for testing.
#
#   launch/local.sh -n 2 --config=configs/debug.py --workdir=/tmp/run [--devices_per_process=4] [--log_dir=DIR] [--config.x=...]
#
# Each process gets `--devices_per_process` simulated CPU devices; their logs go to
# LOG_DIR/process_<i>.log (default WORKDIR/logs; for a gs://BUCKET/PATH workdir ./runs/logs/BUCKET/PATH,
# a local folder), process 0's is also shown. Exits with the first failure's code.
set -euo pipefail

die() { echo "launch/local.sh: $*" >&2; exit 2; }
n="" workdir="" per=4 log_dir=""
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    -n) n="${2:-}"; shift ;;
    -n=*|--processes=*) n="${1#*=}" ;;
    --devices_per_process=*) per="${1#*=}" ;;
    --workdir=*) workdir="${1#*=}"; args+=("$1") ;;
    --log_dir=*) log_dir="${1#*=}" ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) args+=("$1") ;;
  esac
  shift
done
[[ "$n" =~ ^[1-9][0-9]*$ ]] || die "-n N (number of processes, >= 1) is required"
[[ "$per" =~ ^[1-9][0-9]*$ ]] || die "--devices_per_process must be a positive integer"
[ -n "$workdir" ] || die "--workdir is required"
if [ -z "$log_dir" ]; then
  # Process logs are local files: a URL workdir (gs://b/run) must not become a folder named gs:.
  case "$workdir" in
    *://*) log_dir="runs/logs/${workdir#*://}" ;;
    *) log_dir="$workdir/logs" ;;
  esac
fi
case "$log_dir" in *://*) die "--log_dir must be a local folder, not '$log_dir'" ;; esac

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
mkdir -p "$log_dir"
log_dir="$(cd "$log_dir" && pwd)"
echo "launch/local.sh: process logs in $log_dir/" >&2
pids=()
for ((i = 0; i < n; i++)); do
  XLA_FLAGS="--xla_force_host_platform_device_count=$per" JAX_PLATFORMS=cpu \
    "$python" -m glm_jax.train "${args[@]}" --distributed --coordinator_address="127.0.0.1:$port" \
    --num_processes="$n" --process_id="$i" >"$log_dir/process_$i.log" 2>&1 &
  pids+=($!)
done
trap 'kill "${pids[@]}" 2>/dev/null || true' INT TERM
tail -n +1 -f "$log_dir/process_0.log" --pid="${pids[0]}" &
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || { code=$?; [ "$status" = 0 ] && status=$code; }
done
wait
[ "$status" = 0 ] || echo "launch/local.sh: a process failed (exit $status); see $log_dir/" >&2
exit "$status"
