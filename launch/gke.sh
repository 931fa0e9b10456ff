#!/usr/bin/env bash
# Submit a multi-host glm-jax training job to a TPU slice on GKE, as a JobSet.
#
#   launch/gke.sh --name=glm4 --type=v5p-128 --image=IMAGE --config=configs/glm4_9b.py \
#       --workdir=gs://my-bucket/glm4 [--namespace=NS] [--queue=KUEUE_LOCAL_QUEUE] [--max-restarts=N] \
#       [--grace-period=SECONDS] [--out=FILE] [--dry-run] [-- --config.train.steps=1000 ...]
#   launch/gke.sh --name=glm4 --delete [--namespace=NS] [--dry-run]
#
# Writes a JobSet manifest (jobset.x-k8s.io/v1alpha2: one replicated job with one pod per TPU host,
# the slice's accelerator and topology as node selectors, the host's chips as google.com/tpu) and
# runs `kubectl apply -f` on it. Every pod runs the same train command as launch/tpu.sh's workers
# (`python3 -m glm_jax.train ... --distributed`) in IMAGE: a container image with this checkout at
# /app, installed with the [tpu] extra (launch/Dockerfile builds one). `--dry-run` prints the
# manifest and the kubectl command instead. kubectl talks to its current context (first:
# `gcloud container clusters get-credentials CLUSTER`); the cluster needs the JobSet controller and
# a TPU node pool of that type and topology.
set -euo pipefail

die() { echo "launch/gke.sh: $*" >&2; exit 2; }
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
source "$here/common.sh"

name="" type="" image="" config="" workdir="" namespace="default" queue="" max_restarts=0 grace=300 out=""
dry=0 delete=0
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --name=*) name="${1#*=}" ;;
    --type=*) type="${1#*=}" ;;
    --image=*) image="${1#*=}" ;;
    --config=*) config="${1#*=}" ;;
    --workdir=*) workdir="${1#*=}" ;;
    --namespace=*) namespace="${1#*=}" ;;
    --queue=*) queue="${1#*=}" ;;
    --max-restarts=*) max_restarts="${1#*=}" ;;
    --grace-period=*) grace="${1#*=}" ;;
    --out=*) out="${1#*=}" ;;
    --dry-run) dry=1 ;;
    --delete) delete=1 ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) die "unknown flag '$1' (see --help)" ;;
  esac
  shift
done

dns_label='^[a-z]([-a-z0-9]*[a-z0-9])?$'
[ -n "$name" ] || die "--name is required (the JobSet name)"
[[ "$name" =~ $dns_label ]] && [ "${#name}" -le 40 ] \
  || die "--name '$name' must be lowercase letters, digits and '-', at most 40 characters (pod names add to it)"
[[ "$namespace" =~ $dns_label ]] || die "--namespace '$namespace' must be lowercase letters, digits and '-'"

run() {  # print (shell-quoted, copy-pastable); execute unless --dry-run
  printf '+'; printf ' %q' "$@"; printf '\n'
  [ "$dry" = 1 ] || "$@"
}

if [ "$delete" = 1 ]; then
  run kubectl delete jobset "$name" --namespace="$namespace"
  exit 0
fi

[ -n "$type" ] || die "--type is required (e.g. v5p-128, v5litepod-16, v4-32, v6e-64)"
slice_shape "$type"
[ -n "$image" ] \
  || die "--image is required: a container image with this checkout installed at /app (see launch/Dockerfile)"
[[ "$image" =~ ^[A-Za-z0-9][A-Za-z0-9._/:@-]*$ ]] || die "--image '$image' is not a container image reference"
[ -n "$config" ] || die "--config is required (e.g. configs/glm4_9b.py)"
config="$(config_in_repo "$config")"
[ -n "$workdir" ] || die "--workdir is required: a gs:// path every host can write (checkpoints, metrics)"
[[ "$workdir" == gs://* ]] || die "--workdir '$workdir' must be a gs:// path: the pods share no local disk"
[[ "$max_restarts" =~ ^[0-9]+$ ]] || die "--max-restarts must be a non-negative integer"
[[ "$grace" =~ ^[0-9]+$ ]] || die "--grace-period must be a number of seconds"
[ -z "$queue" ] || [[ "$queue" =~ $dns_label ]] || die "--queue '$queue' must be a Kueue LocalQueue name"

train="$(train_command "$config" "$workdir" "${extra[@]}")"
queue_label=""
[ -z "$queue" ] || queue_label="
    kueue.x-k8s.io/queue-name: $queue"

# The layout is the one xpk writes for a TPU workload (github.com/google/xpk:
# src/xpk/commands/workload.py `workload_create_yaml`, src/xpk/core/core.py `get_main_container`):
# exclusive node pool per replicated job, parallelism = completions = hosts, backoffLimit 0,
# hostNetwork, privileged container with ports 8471/8080, TPU node selectors and limits. Added here:
# the jax.distributed coordinator (pod 0 of the job, through the JobSet's headless service, port
# 8476 as jax uses on TPU), the process count and this pod's index as JAX_NUM_PROCESSES /
# JAX_PROCESS_ID (its completion index, which is also GKE's TPU_WORKER_ID), which
# glm_jax.train --distributed reads; and a grace period for the checkpoint saved on SIGTERM.
manifest="# glm-jax on $type: $SLICE_HOSTS hosts x $SLICE_CHIPS_PER_HOST chips, topology $SLICE_TOPOLOGY (launch/gke.sh)
apiVersion: jobset.x-k8s.io/v1alpha2
kind: JobSet
metadata:
  name: $name
  namespace: $namespace
  labels:
    app.kubernetes.io/name: glm-jax$queue_label
  annotations:
    alpha.jobset.sigs.k8s.io/exclusive-topology: cloud.google.com/gke-nodepool
spec:
  failurePolicy:
    maxRestarts: $max_restarts
  replicatedJobs:
    - name: slice
      replicas: 1
      template:
        spec:
          parallelism: $SLICE_HOSTS
          completions: $SLICE_HOSTS
          completionMode: Indexed
          backoffLimit: 0
          template:
            metadata:
              labels:
                app.kubernetes.io/name: glm-jax
            spec:
              restartPolicy: Never
              nodeSelector:
                cloud.google.com/gke-tpu-accelerator: $SLICE_GKE_ACCELERATOR
                cloud.google.com/gke-tpu-topology: $SLICE_TOPOLOGY
              hostNetwork: true
              dnsPolicy: ClusterFirstWithHostNet
              terminationGracePeriodSeconds: $grace
              containers:
                - name: glm-jax
                  image: \"$image\"
                  workingDir: /app
                  env:
                    - name: JOBSET_NAME
                      valueFrom:
                        fieldRef:
                          fieldPath: metadata.annotations['jobset.sigs.k8s.io/jobset-name']
                    - name: REPLICATED_JOB_NAME
                      valueFrom:
                        fieldRef:
                          fieldPath: metadata.annotations['jobset.sigs.k8s.io/replicatedjob-name']
                    - name: JAX_COORDINATOR_ADDRESS
                      value: \"\$(JOBSET_NAME)-\$(REPLICATED_JOB_NAME)-0-0.\$(JOBSET_NAME):8476\"
                    - name: JAX_NUM_PROCESSES
                      value: \"$SLICE_HOSTS\"
                    - name: JAX_PROCESS_ID
                      valueFrom:
                        fieldRef:
                          fieldPath: metadata.annotations['batch.kubernetes.io/job-completion-index']
                  ports:
                    - containerPort: 8471
                    - containerPort: 8080
                    - containerPort: 8476
                  securityContext:
                    privileged: true
                  command:
                    - bash
                    - -c
                    - |-
                      $train
                  resources:
                    limits:
                      google.com/tpu: $SLICE_CHIPS_PER_HOST"

file="${out:-${TMPDIR:-/tmp}/glm-jax-$name.jobset.yaml}"
if [ "$dry" = 1 ]; then
  printf '%s\n' "$manifest"
else
  printf '%s\n' "$manifest" >"$file"
fi
run kubectl apply -f "$file"
echo "follow it with: kubectl get jobset $name --namespace=$namespace; kubectl logs -f --namespace=$namespace" \
     "-l jobset.sigs.k8s.io/jobset-name=$name --max-log-requests=$SLICE_HOSTS --prefix" >&2
echo "delete it with: launch/gke.sh --name=$name --namespace=$namespace --delete" >&2
