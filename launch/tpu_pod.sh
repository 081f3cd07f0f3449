#!/usr/bin/env bash
# Trains on a Cloud TPU VM slice (or several slices): ships this repository (a tarball in the
# bucket, or a git ref), creates or reuses the slice, installs the pinned requirements and the TPU
# build of jax on every worker, runs `python -m vrl.main` on all workers at once with their logs
# in the bucket, and after a preemption creates the slice again and reruns the same command, which
# resumes from the gs:// workdir. docs/TPU.md goes from an empty project to a running pod.
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
#   --existing           use an existing TPU VM / queued resource: no create, no delete, and
#                        no re-creation after a preemption
#   --keep               do not delete the TPU VM at the end
#   --max_requeues=N     after a preemption, create the slice again and rerun at most N times
#                        (default 10)
#   --git_ref=REF        workers clone this commit, branch or tag instead of unpacking a tarball
#                        of this checkout
#   --git_url=URL        repository to clone --git_ref from (default: this checkout's origin)
#   --launch_dir=URL     gs:// folder for the code tarball and the logs (default: WORKDIR/launch)
#   --jax_version=V      install jax[tpu]==V instead of the version pinned in requirements-tpu.txt
#   --poll_s=S           seconds between state checks while waiting for a slice (default 30)
#   --dry_run            print every command instead of running it
#
# Every worker's output streams to this terminal, each line prefixed with its host name, and is
# copied every minute to LAUNCH_DIR/logs/attempt-K/HOST.log (HOST.rc: its exit code). The TPU VM
# is deleted on exit (also after a failure or Ctrl-C) unless --keep or --existing is given.
# Exit codes: 0 the run finished; 2 a bad argument, bucket or slice request, or the run's config
# error (fix it); 3 / 4 the run stopped (its last line says why); 75 still preempted after
# --max_requeues re-creations (rerun this command: it resumes); 130 interrupted; any other code
# is the run's own, on a slice that was not preempted (see its log).
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
  exit 2
}

fail() {
  echo "tpu_pod.sh: $*" >&2
  exit 2
}

name="" zone="" accelerator="" version="" project="" jax_version=""
git_ref="" git_url="" launch_dir=""
queued=0 num_slices=1 spot=0 existing=0 keep=0 dry_run=0 max_requeues=10 poll_s=30
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
    --max_requeues=*) max_requeues="${1#*=}" ;;
    --git_ref=*) git_ref="${1#*=}" ;;
    --git_url=*) git_url="${1#*=}" ;;
    --launch_dir=*) launch_dir="${1#*=}" ;;
    --jax_version=*) jax_version="${1#*=}" ;;
    --poll_s=*) poll_s="${1#*=}" ;;
    --dry_run) dry_run=1 ;;
    -h | --help) usage ;;
    --) shift; break ;;
    *) fail "unknown argument '$1' (options go before '--'; see --help)" ;;
  esac
  shift
done
for required in name zone accelerator; do
  if [[ -z "${!required}" ]]; then
    fail "--$required is required (see --help)"
  fi
done
if ! [[ "$num_slices" =~ ^[1-9][0-9]*$ ]]; then
  fail "--num_slices must be a positive integer, got '$num_slices'"
fi
if ! [[ "$max_requeues" =~ ^[0-9]+$ ]]; then
  fail "--max_requeues must be a whole number, got '$max_requeues'"
fi
if ! [[ "$poll_s" =~ ^[1-9][0-9]*$ ]]; then
  fail "--poll_s must be a positive integer, got '$poll_s'"
fi
if ((num_slices > 1)); then
  queued=1
fi
if [[ $# -eq 0 ]]; then
  fail "give the vrl.main arguments after '--', e.g. -- --config=... --workdir=gs://..."
fi
if [[ -z "$version" ]]; then
  case "$accelerator" in
    v6e-*) version="v2-alpha-tpuv6e" ;;
    v5litepod-* | v5e-*) version="v2-alpha-tpuv5-lite" ;;
    v5p-*) version="v2-alpha-tpuv5" ;;
    *) version="tpu-ubuntu2204-base" ;;
  esac
fi

# The workdir outlives the slice and every worker writes it: it must be a bucket folder.
workdir="" previous=""
for arg in "$@"; do
  case "$arg" in
    --workdir=*) workdir="${arg#*=}" ;;
  esac
  if [[ "$previous" == --workdir ]]; then
    workdir="$arg"
  fi
  previous="$arg"
done
bucket_url='^gs://[^/]+(/|$)'
if ! [[ "$workdir" =~ $bucket_url ]]; then
  fail "--workdir must be gs://BUCKET/PATH (got '${workdir:-nothing}'): a TPU worker's disk is" \
    "deleted with its slice"
fi
workdir="${workdir%/}"
launch_dir="${launch_dir:-$workdir/launch}"
launch_dir="${launch_dir%/}"
if ! [[ "$launch_dir" =~ $bucket_url ]]; then
  fail "--launch_dir must be gs://BUCKET/PATH, got '$launch_dir'"
fi
bucket_of() {
  local rest="${1#gs://}"
  echo "gs://${rest%%/*}"
}
buckets=("$(bucket_of "$workdir")")
if [[ "$(bucket_of "$launch_dir")" != "${buckets[0]}" ]]; then
  buckets+=("$(bucket_of "$launch_dir")")
fi

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -n "$git_ref" && -z "$git_url" ]]; then
  git_url="$(git -C "$repo" remote get-url origin 2>/dev/null)" ||
    fail "--git_ref needs --git_url=URL: $repo has no remote 'origin'"
fi
archive="${TMPDIR:-/tmp}/$name-code.tar.gz"
where=("--zone=$zone")
if [[ -n "$project" ]]; then
  where+=("--project=$project")
fi
if [[ "$queued" == 1 ]]; then
  nodes=(queued-resources)
  on_all=(--node=all --worker=all)
  describe=(gcloud compute tpus queued-resources describe "$name" "${where[@]}"
    "--format=value(state.state)")
  ready=ACTIVE
else
  nodes=(tpu-vm)
  on_all=(--worker=all)
  describe=(gcloud compute tpus tpu-vm describe "$name" "${where[@]}" "--format=value(state)")
  ready=READY
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

# Runs a shell command on every worker of every slice.
on_workers() {
  run gcloud compute tpus "${nodes[@]}" ssh "$name" "${on_all[@]}" "${where[@]}" "--command=$1"
}

# The slice's state (ACTIVE / READY when usable); empty when it does not exist.
slice_state() {
  "${describe[@]}" 2>/dev/null || true
}

create_slice() {
  local capacity=() node_args=()
  if [[ "$spot" == 1 ]]; then
    capacity=(--spot)
  fi
  if [[ "$queued" == 1 ]]; then
    if ((num_slices > 1)); then
      node_args=("--node-count=$num_slices" "--node-prefix=$name")
    else
      node_args=("--node-id=$name")
    fi
    run gcloud compute tpus queued-resources create "$name" "${where[@]}" \
      "--accelerator-type=$accelerator" "--runtime-version=$version" "${node_args[@]}" \
      "${capacity[@]}" || fail "could not request $name (gcloud's message above)"
  else
    run gcloud compute tpus tpu-vm create "$name" "${where[@]}" \
      "--accelerator-type=$accelerator" "--version=$version" "${capacity[@]}" ||
      fail "could not create $name (gcloud's message above)"
  fi
}

delete_slice() {
  if [[ "$queued" == 1 ]]; then
    run gcloud compute tpus queued-resources delete "$name" "${where[@]}" --force --quiet
  else
    run gcloud compute tpus tpu-vm delete "$name" "${where[@]}" --quiet
  fi
}

# shellcheck disable=SC2329 # run by the EXIT trap
on_exit() {
  local rc=$?
  delete_slice || true
  exit "$rc"
}

# Creates the slice, or reuses it if it is there and usable (a relaunch after this terminal was
# lost), and waits until it is usable; fails if the queue gives up on it.
acquire_slice() {
  local state
  if [[ "$dry_run" == 1 ]]; then
    run "${describe[@]}"
    create_slice
    echo "# wait until the describe command above prints $ready"
    return
  fi
  state="$(slice_state)"
  case "$state" in
    "") create_slice ;;
    "$ready") echo "tpu_pod.sh: reusing $name ($state)" >&2 ;;
    FAILED | SUSPENDED | PREEMPTED | TERMINATED | STOPPED)
      echo "tpu_pod.sh: $name is $state: deleting it and creating it again" >&2
      delete_slice || true
      create_slice
      ;;
  esac
  echo "tpu_pod.sh: waiting for $name to be $ready" >&2
  while true; do
    state="$(slice_state)"
    case "$state" in
      "$ready") return 0 ;;
      "" | FAILED | SUSPENDING | SUSPENDED | PREEMPTED | TERMINATED | STOPPED)
        echo "tpu_pod.sh: $name is ${state:-gone}" >&2
        return 1
        ;;
    esac
    sleep "$poll_s"
  done
}

# A run lost with its slice before it could save leaves WORKDIR/lock.json behind; vrl takes such
# a lock over once its lease is 5 minutes old, so the next attempt waits until then.
wait_for_stale_lock() {
  local left
  if [[ -z "$lost_at" ]] || ! gcloud storage ls "$workdir/lock.json" >/dev/null 2>&1; then
    return 0
  fi
  left=$((lost_at + 330 - SECONDS))
  if ((left > 0)); then
    echo "tpu_pod.sh: the lost run left $workdir/lock.json; waiting ${left} s for its lease" \
      "to go stale" >&2
    sleep "$left"
  fi
}

# The number of this launch's first attempt: after those of earlier launches into the same
# folder, whose logs stay.
first_attempt() {
  local last
  last="$(gcloud storage ls "$launch_dir/logs/" 2>/dev/null |
    sed -n 's|.*/attempt-\([0-9][0-9]*\)/$|\1|p' | sort -n | tail -n 1)"
  echo $((${last:-0} + 1))
}

# The code that says what happened to an attempt: the workers' own codes (in the bucket, since
# a preempted worker's ssh session only says that it ended), most telling first.
outcome() {
  local ssh_rc=$1 codes code
  codes="$(gcloud storage cat "$2/*.rc" 2>/dev/null || true)"
  for code in 2 3 4 130 75; do
    if grep -qx "$code" <<<"$codes"; then
      echo "$code"
      return
    fi
  done
  code="$(grep -vx 0 <<<"$codes" | head -n 1 || true)"
  echo "${code:-$ssh_rc}"
}

# --- Check the buckets, ship the code ----------------------------------------------------------
for url in "${buckets[@]}"; do
  if [[ "$dry_run" == 1 ]]; then
    run gcloud storage buckets describe "$url" "--format=value(name)"
  elif ! gcloud storage buckets describe "$url" "--format=value(name)" >/dev/null 2>&1; then
    fail "bucket $url does not exist or these credentials cannot see it; create it with" \
      "gcloud storage buckets create $url --location=REGION (docs/TPU.md)"
  fi
done
if [[ -n "$git_ref" ]]; then
  fetch="rm -rf ~/vrl && git clone -q $(printf '%q' "$git_url") ~/vrl"
  fetch+=" && git -C ~/vrl checkout -q $(printf '%q' "$git_ref")"
else
  run tar -czf "$archive" -C "$repo" --exclude=.git --exclude=.venv --exclude=runs \
    --exclude=__pycache__ --exclude=.pytest_cache .
  run gcloud storage cp "$archive" "$launch_dir/code.tar.gz"
  fetch="rm -rf ~/vrl ~/vrl-code.tar.gz && mkdir -p ~/vrl"
  fetch+=" && gcloud storage cp $(printf '%q' "$launch_dir/code.tar.gz") ~/vrl-code.tar.gz"
  fetch+=" && tar -xzf ~/vrl-code.tar.gz -C ~/vrl"
fi
# Python 3.11 from uv: the TPU images' own Python is older than vrl needs.
setup="$fetch && cd ~/vrl"
setup+=" && { test -x ~/.local/bin/uv || curl -LsSf https://astral.sh/uv/install.sh | sh; }"
setup+=" && rm -rf ~/vrl-env && ~/.local/bin/uv venv -q --python=3.11 ~/vrl-env"
# shellcheck disable=SC2088 # the worker's shell expands it
install="~/.local/bin/uv pip install -q --python ~/vrl-env/bin/python"
setup+=" && $install -r requirements.txt -r requirements-tpu.txt"
if [[ -n "$jax_version" ]]; then
  setup+=" && $install 'jax[tpu]==$jax_version'"
fi
args="$(printf '%q ' "$@" --distributed=yes)"

# --- Create, set up, run; after a preemption create again and rerun -----------------------------
if [[ "$existing" == 0 && "$keep" == 0 ]]; then
  trap on_exit EXIT
fi
attempt=1 requeues=0 lost_at=""
if [[ "$dry_run" == 0 ]]; then
  attempt="$(first_attempt)"
fi
while true; do
  logs="$launch_dir/logs/attempt-$attempt"
  rc=0
  if [[ "$existing" == 0 ]]; then
    acquire_slice || rc=75
  fi
  if ((rc == 0)); then
    wait_for_stale_lock
    on_workers "$setup" || rc=$?
  fi
  if ((rc == 0)); then
    on_workers "cd ~/vrl && bash launch/tpu_worker.sh $(printf '%q' "$logs") -- ${args% }" ||
      rc=$?
  fi
  if [[ "$dry_run" == 1 ]]; then
    run gcloud storage cat "$logs/*.rc"
    if [[ "$existing" == 1 ]]; then
      echo "# after a worker exits 75 on a slice that stays $ready, up to $max_requeues times:" \
        "run again as attempt-$((attempt + 1)), ..."
    else
      echo "# after a preemption (the describe command above no longer prints $ready, or a" \
        "worker exits 75), up to $max_requeues times: delete, create, set up and run again as" \
        "attempt-$((attempt + 1)), ..."
    fi
    break
  fi
  rc="$(outcome "$rc" "$logs")"
  case "$rc" in
    0 | 2 | 3 | 4 | 130) break ;;
  esac
  state="$(slice_state)"
  if [[ "$state" == "$ready" && "$rc" != 75 ]]; then
    break # a failure on a slice that is still there: not a preemption
  fi
  if ((requeues >= max_requeues)); then
    echo "tpu_pod.sh: preempted $((requeues + 1)) times (--max_requeues=$max_requeues);" \
      "rerun this command to resume from $workdir" >&2
    rc=75
    break
  fi
  if [[ "$state" != "$ready" ]]; then
    if [[ "$existing" == 1 ]]; then
      echo "tpu_pod.sh: $name is ${state:-gone}; with --existing it is not created again" >&2
      break
    fi
    lost_at=$SECONDS
    delete_slice || true
  fi
  requeues=$((requeues + 1))
  echo "tpu_pod.sh: attempt $attempt ended with code $rc and $name ${state:-gone}; re-queue" \
    "$requeues of $max_requeues" >&2
  attempt=$((attempt + 1))
done
exit "$rc"
