#!/usr/bin/env bash
# Submit a multi-host glm-jax training job to a Cloud TPU slice (queued resources).
#
#   launch/tpu.sh --name=glm4 --zone=us-east5-a --type=v5p-128 --config=configs/glm4_9b.py \
#       --workdir=gs://my-bucket/glm4 [--project=P] [--spot] [--runtime=VERSION] [--dry-run] \
#       [-- --config.train.steps=1000 ...]
#   launch/tpu.sh --name=glm4 --zone=us-east5-a --delete [--dry-run]
#
# Steps: create the slice (queued resource), wait until ACTIVE, copy this checkout to every worker
# (the code only: glm_jax, configs, data, launch, setup.py) and install it with the [tpu] extra,
# start `python3 -m glm_jax.train ... --distributed` on all workers at once (one jax.distributed
# job; jax finds the other hosts from the TPU metadata), and stream their logs.
# `--dry-run` prints every command instead of running it. `--delete` deletes the slice.
set -euo pipefail

die() { echo "launch/tpu.sh: $*" >&2; exit 2; }
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
source "$here/common.sh"

name="" zone="" type="" config="" workdir="" project="" runtime="" spot=0 dry=0 delete=0
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --name=*) name="${1#*=}" ;;
    --zone=*) zone="${1#*=}" ;;
    --type=*) type="${1#*=}" ;;
    --config=*) config="${1#*=}" ;;
    --workdir=*) workdir="${1#*=}" ;;
    --project=*) project="${1#*=}" ;;
    --runtime=*) runtime="${1#*=}" ;;
    --spot) spot=1 ;;
    --dry-run) dry=1 ;;
    --delete) delete=1 ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) die "unknown flag '$1' (see --help)" ;;
  esac
  shift
done

[ -n "$name" ] || die "--name is required (the TPU slice name)"
[[ "$name" =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] || die "--name '$name' must be lowercase letters, digits and '-'"
[ -n "$zone" ] || die "--zone is required (e.g. us-east5-a)"

run() {  # print (shell-quoted, copy-pastable); execute unless --dry-run
  printf '+'; printf ' %q' "$@"; printf '\n'
  [ "$dry" = 1 ] || "$@"
}

gproj=()
[ -n "$project" ] && gproj=(--project="$project")
qr="${name}-qr"

if [ "$delete" = 1 ]; then
  run gcloud compute tpus queued-resources delete "$qr" --zone="$zone" "${gproj[@]}" --force --quiet
  exit 0
fi

[ -n "$type" ] || die "--type is required (e.g. v5p-128, v5litepod-16, v4-32, v6e-64)"
slice_shape "$type"
[ -n "$config" ] || die "--config is required (e.g. configs/glm4_9b.py)"
config="$(config_in_repo "$config")"
[ -n "$workdir" ] || die "--workdir is required: a gs:// path every host can write (checkpoints, metrics)"
[[ "$workdir" == gs://* ]] || die "--workdir '$workdir' must be a gs:// path: the workers share no local disk"
runtime="${runtime:-$SLICE_RUNTIME}"

create=(gcloud compute tpus queued-resources create "$qr" --node-id="$name" --zone="$zone"
        --accelerator-type="$type" --runtime-version="$runtime" "${gproj[@]}")
[ "$spot" = 1 ] && create+=(--spot)
run "${create[@]}"

if [ "$dry" = 1 ]; then
  echo "+ (wait until: gcloud compute tpus queued-resources describe $qr --zone=$zone --format='value(state.state)' prints ACTIVE)"
else
  while :; do
    state="$(gcloud compute tpus queued-resources describe "$qr" --zone="$zone" "${gproj[@]}" \
               --format='value(state.state)')" || die "cannot read the state of queued resource $qr (see above)"
    case "$state" in
      ACTIVE) break ;;
      FAILED|SUSPENDED) die "queued resource $qr is $state; see \`gcloud compute tpus queued-resources" \
                            "describe $qr --zone=$zone\`, then delete it: launch/tpu.sh --name=$name" \
                            "--zone=$zone --delete" ;;
    esac
    sleep 30
  done
fi

# The code only (CODE_PATHS in launch/common.sh): never .git, .venv, runs/ or other local folders.
tarball="${TMPDIR:-/tmp}/glm-jax-$name.$$.tar.gz"
[ "$dry" = 1 ] || trap 'rm -f "$tarball"' EXIT  # also once copied, below
run tar -C "$repo" "${CODE_EXCLUDES[@]}" -czf "$tarball" "${CODE_PATHS[@]}"
ssh_all=(gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" "${gproj[@]}" --worker=all)
run gcloud compute tpus tpu-vm scp "$tarball" "$name:glm-jax.tar.gz" --zone="$zone" "${gproj[@]}" --worker=all
[ "$dry" = 1 ] || rm -f "$tarball"
# A fresh ~/glm-jax each launch (no module of an older checkout lingers), installed into the
# interpreter that then runs the trainer.
run "${ssh_all[@]}" --command="rm -rf ~/glm-jax && mkdir -p ~/glm-jax && tar -xzf ~/glm-jax.tar.gz -C ~/glm-jax \
&& cd ~/glm-jax && python3 -m pip install -q -e '.[tpu]'"

train="cd ~/glm-jax && $(train_command "$config" "$workdir" "${extra[@]}")"
# All workers start together, each joining one jax.distributed job (--distributed: on Cloud TPU
# jax finds the coordinator and its process index from the TPU metadata).
# Output of every worker streams back here; SIGTERM on preemption makes the trainer checkpoint and exit.
run "${ssh_all[@]}" --command="$train"
echo "slice $name ($type) still runs; delete it with: launch/tpu.sh --name=$name --zone=$zone --delete" >&2
