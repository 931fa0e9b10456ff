# Shared by launch/tpu.sh and launch/gke.sh (sourced, not run): what a TPU type means and the one
# train command every host runs. The sourcing script defines `die MESSAGE` (prints, exits 2) and
# `repo` (the checkout).

# What the job needs on a host, nothing else (no .git, .venv, runs/, caches, notebooks, tests).
CODE_PATHS=(glm_jax configs data launch setup.py README.md LICENSE)
CODE_EXCLUDES=(--exclude=__pycache__ --exclude='*.pyc' --exclude='*.egg-info' --exclude=.pytest_cache)

# slice_shape TYPE: sets SLICE_CHIPS, SLICE_HOSTS, SLICE_CHIPS_PER_HOST, SLICE_TOPOLOGY,
# SLICE_GKE_ACCELERATOR (the GKE node label) and SLICE_RUNTIME (the TPU VM image), or dies.
# v4-N / v5p-N count TensorCores (2 per chip, 4 chips per host, 3D torus); v5litepod-N (v5e-N) /
# v6e-N count chips (2D; one host up to 8 chips, else 4 chips per host). Topologies are the ones
# xpk writes for these types (github.com/google/xpk, src/xpk/core/system_characteristics.py).
slice_shape() {
  local type="$1" n dims i
  case "$type" in
    v4-*|v5p-*|v5litepod-*|v5e-*|v6e-*) ;;
    *) die "unknown --type '$type': use v4-N, v5p-N, v5litepod-N or v6e-N" ;;
  esac
  n="${type#*-}"
  [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] && [ $((n & (n - 1))) -eq 0 ] \
    || die "unknown --type '$type': the size after '-' must be a power of two"
  case "$type" in
    v4-*|v5p-*)
      [ "$n" -ge 8 ] || die "--type '$type': v4/v5p sizes count TensorCores, the smallest slice is ${type%%-*}-8"
      SLICE_CHIPS=$((n / 2))
      if [ "$SLICE_CHIPS" -eq 4 ]; then dims=(2 2 1); else dims=(2 2 2); fi
      i=2
      while [ $((dims[0] * dims[1] * dims[2])) -lt "$SLICE_CHIPS" ]; do
        dims[i]=$((dims[i] * 2)); i=$(((i + 2) % 3))
      done
      SLICE_TOPOLOGY="${dims[0]}x${dims[1]}x${dims[2]}"
      SLICE_CHIPS_PER_HOST=4 ;;
    *)
      [ "$n" -le 256 ] || die "--type '$type': ${type%%-*} slices have at most 256 chips"
      SLICE_CHIPS=$n
      dims=(1 1); i=1
      while [ $((dims[0] * dims[1])) -lt "$SLICE_CHIPS" ]; do
        dims[i]=$((dims[i] * 2)); i=$((1 - i))
      done
      SLICE_TOPOLOGY="${dims[0]}x${dims[1]}"
      if [ "$n" -le 8 ]; then SLICE_CHIPS_PER_HOST=$n; else SLICE_CHIPS_PER_HOST=4; fi ;;
  esac
  SLICE_HOSTS=$((SLICE_CHIPS / SLICE_CHIPS_PER_HOST))
  case "$type" in
    v4-*) SLICE_GKE_ACCELERATOR=tpu-v4-podslice SLICE_RUNTIME=tpu-ubuntu2204-base ;;
    v5p-*) SLICE_GKE_ACCELERATOR=tpu-v5p-slice SLICE_RUNTIME=v2-alpha-tpuv5 ;;
    v5litepod-*|v5e-*) SLICE_GKE_ACCELERATOR=tpu-v5-lite-podslice SLICE_RUNTIME=v2-alpha-tpuv5-lite ;;
    v6e-*) SLICE_GKE_ACCELERATOR=tpu-v6e-slice SLICE_RUNTIME=v2-alpha-tpuv6e ;;
  esac
}

# train_command CONFIG WORKDIR [EXTRA...]: the command line every host runs (shell-quoted).
# `--distributed`: each host joins one jax.distributed job; on Cloud TPU (VM or GKE) jax finds the
# coordinator, process count and index itself (elsewhere from JAX_COORDINATOR_ADDRESS,
# JAX_NUM_PROCESSES, JAX_PROCESS_ID; see glm_jax/train/__main__.py).
train_command() {
  local cmd arg
  cmd="python3 -m glm_jax.train --config=$(printf '%q' "$1") --workdir=$(printf '%q' "$2") --distributed"
  shift 2
  for arg in "$@"; do cmd+=" $(printf '%q' "$arg")"; done
  printf '%s\n' "$cmd"
}

# config_in_repo CONFIG: CONFIG (`file.py` or `file.py:arg`, as glm_jax.train takes it) as a path
# relative to the checkout, which is what the hosts see; dies when the file is missing or outside.
config_in_repo() {
  local file="${1%%:*}" arg="" abs
  [ "$file" = "$1" ] || arg=":${1#*:}"
  [ -f "$file" ] || die "--config '$file' does not exist"
  abs="$(cd "$(dirname "$file")" && pwd)/$(basename "$file")"
  case "$abs" in
    "$repo"/*) printf '%s\n' "${abs#"$repo"/}$arg" ;;
    *) die "--config '$file' is outside this checkout ($repo): only the checkout is sent to the hosts" ;;
  esac
}
