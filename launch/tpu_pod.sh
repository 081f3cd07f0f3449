#!/usr/bin/env bash
# Trains on a Cloud TPU VM slice (or several slices): create it, copy this repository to every
# worker, install, run `python -m vrl.main` on all workers at once, stream the logs, delete it.
#
#   launch/tpu_pod.sh --name=NAME --zone=ZONE --accelerator=TYPE [options] -- <vrl.main args>
#
# Example (a v5p-32 slice = 4 hosts; --workdir must be a bucket every host can write):
#
#   launch/tpu_pod.sh --name=vrl-cvrl --zone=us-east5-a --accelerator=v5p-32 --queued --spot -- \
#       --config=configs/cvrl_k600.py --workdir=gs://BUCKET/runs/cvrl
#
# Options:
#   --name=NAME          TPU VM (or queued resource) name (required)
#   --zone=ZONE          zone (required)
#   --accelerator=TYPE   accelerator type, e.g. v4-32, v5litepod-16, v5p-64, v6e-16 (required)
#   --version=RUNTIME    TPU software version (default: chosen from the accelerator family)
#   --project=PROJECT    project (default: gcloud's configured project)
#   --queued             request through the queue (gcloud ... queued-resources); waits until
#                        the slice is ACTIVE. Needed for --num_slices > 1
#   --num_slices=K       K slices joined over the data-centre network (multislice; implies
#                        --queued). Pair with --config.mesh.dcn_data=K
#   --spot               Spot capacity (cheaper, may be preempted: the run saves on SIGTERM)
#   --existing           use an existing TPU VM / queued resource: no create, no delete
#   --keep               do not delete the TPU VM at the end
#   --jax_version=V      jax[tpu] version to install (default 0.10.2, as requirements.txt)
#   --dry_run            print every command instead of running it
#
# Logs of every worker stream to this terminal, each line prefixed with the worker's host name,
# and are kept in ~/vrl-run.log on each worker. The exit code is the run's; the TPU VM is deleted
# on exit (also after a failure or Ctrl-C) unless --keep or --existing is given.
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
  exit 2
}

name="" zone="" accelerator="" version="" project=""
queued=0 num_slices=1 spot=0 existing=0 keep=0 dry_run=0 jax_version="0.10.2"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name=*) name="${1#*=}" ;;
    --zone=*) zone="${1#*=}" ;;
    --accelerator=*) accelerator="${1#*=}" ;;
    --version=*) version="${1#*=}" ;;
    --project=*) project="${1#*=}" ;;
    --queued) queued=1 ;;
    --num_slices=*) num_slices="${1#*=}" ;;
    --spot) spot=1 ;;
    --existing) existing=1 ;;
    --keep) keep=1 ;;
    --jax_version=*) jax_version="${1#*=}" ;;
    --dry_run) dry_run=1 ;;
    -h | --help) usage ;;
    --) shift; break ;;
    *) echo "tpu_pod.sh: unknown argument '$1' (options go before '--'; see --help)" >&2; exit 2 ;;
  esac
  shift
done
for required in name zone accelerator; do
  if [[ -z "${!required}" ]]; then
    echo "tpu_pod.sh: --$required is required (see --help)" >&2
    exit 2
  fi
done
if ! [[ "$num_slices" =~ ^[1-9][0-9]*$ ]]; then
  echo "tpu_pod.sh: --num_slices must be a positive integer, got '$num_slices'" >&2
  exit 2
fi
if ((num_slices > 1)); then
  queued=1
fi
if [[ $# -eq 0 ]]; then
  echo "tpu_pod.sh: give the vrl.main arguments after '--', e.g. -- --config=... --workdir=gs://..." >&2
  exit 2
fi
if [[ -z "$version" ]]; then
  case "$accelerator" in
    v6e-*) version="v2-alpha-tpuv6e" ;;
    v5litepod-* | v5e-*) version="v2-alpha-tpuv5-lite" ;;
    v5p-*) version="v2-alpha-tpuv5" ;;
    *) version="tpu-ubuntu2204-base" ;;
  esac
fi

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
archive="${TMPDIR:-/tmp}/$name-code.tar.gz"
where=("--zone=$zone")
if [[ -n "$project" ]]; then
  where+=("--project=$project")
fi
if [[ "$queued" == 1 ]]; then
  nodes=(queued-resources)
  on_all=(--node=all --worker=all)
else
  nodes=(tpu-vm)
  on_all=(--worker=all)
fi

# Prints a command so that it can be pasted into a shell (single quotes where needed).
show() {
  local out="" word
  for word in "$@"; do
    if [[ ! "$word" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
      word="'${word//\'/\'\\\'\'}'"
    fi
    out+="${out:+ }$word"
  done
  echo "$out"
}

# Runs (or, with --dry_run, prints) one command.
run() {
  if [[ "$dry_run" == 1 ]]; then
    show "$@"
  else
    "$@"
  fi
}

delete_tpu() {
  local rc=$?
  if [[ "$queued" == 1 ]]; then
    run gcloud compute tpus queued-resources delete "$name" "${where[@]}" --force --quiet || true
  else
    run gcloud compute tpus tpu-vm delete "$name" "${where[@]}" --quiet || true
  fi
  exit "$rc"
}

# --- Create ------------------------------------------------------------------------------------
capacity=()
if [[ "$spot" == 1 ]]; then
  capacity=(--spot)
fi
if [[ "$existing" == 0 ]]; then
  if [[ "$keep" == 0 ]]; then
    trap delete_tpu EXIT
  fi
  if [[ "$queued" == 1 ]]; then
    if ((num_slices > 1)); then
      node_args=("--node-count=$num_slices" "--node-prefix=$name")
    else
      node_args=("--node-id=$name")
    fi
    run gcloud compute tpus queued-resources create "$name" "${where[@]}" \
      "--accelerator-type=$accelerator" "--runtime-version=$version" "${node_args[@]}" \
      "${capacity[@]}"
    describe=(gcloud compute tpus queued-resources describe "$name" "${where[@]}"
      "--format=value(state.state)")
    if [[ "$dry_run" == 1 ]]; then
      run "${describe[@]}"
    else
      echo "tpu_pod.sh: waiting for queued resource $name to become ACTIVE" >&2
      until [[ "$("${describe[@]}")" == ACTIVE ]]; do
        state="$("${describe[@]}")"
        if [[ "$state" == FAILED || "$state" == SUSPENDED ]]; then
          echo "tpu_pod.sh: queued resource $name is $state" >&2
          exit 1
        fi
        sleep 30
      done
    fi
  else
    run gcloud compute tpus tpu-vm create "$name" "${where[@]}" \
      "--accelerator-type=$accelerator" "--version=$version" "${capacity[@]}"
  fi
fi

# --- Copy and install ----------------------------------------------------------------------------
run tar -czf "$archive" -C "$repo" --exclude=.git --exclude=.venv --exclude=runs \
  --exclude=__pycache__ --exclude=.pytest_cache .
run gcloud compute tpus "${nodes[@]}" scp "$archive" "$name:vrl-code.tar.gz" "${on_all[@]}" \
  "${where[@]}"
install="rm -rf ~/vrl && mkdir -p ~/vrl && tar -xzf ~/vrl-code.tar.gz -C ~/vrl && cd ~/vrl"
install+=" && python3 -m pip install -q -r requirements.txt 'jax[tpu]==$jax_version'"
run gcloud compute tpus "${nodes[@]}" ssh "$name" "${on_all[@]}" "${where[@]}" \
  "--command=$install"

# --- Run on every worker at once; logs stream back prefixed by host -----------------------------
args="$(printf '%q ' "$@" --distributed=yes)"
train="cd ~/vrl && python3 -m vrl.main ${args% } 2>&1 | tee ~/vrl-run.log"
train+=" | sed -u \"s/^/[\$(hostname)] /\"; exit \${PIPESTATUS[0]}"
run gcloud compute tpus "${nodes[@]}" ssh "$name" "${on_all[@]}" "${where[@]}" \
  "--command=$train"
