#!/usr/bin/env bash
# Runs N processes of one multi-process JAX job on this machine, with a local coordinator.
#
#   launch/local.sh [options] N -- <python -m vrl.main arguments>
#
# Example: 2 processes x 4 fake CPU devices, the same global mesh as 1 process x 8 devices:
#
#   launch/local.sh --cpu_devices=4 2 -- --config=configs/quickstart.py:runlocal --workdir=/tmp/q
#
# Options:
#   --cpu_devices=K       each process gets K fake CPU devices (JAX_PLATFORMS=cpu, gloo
#                         collectives); without it each process uses the machine's accelerators
#   --gpus_per_process=K  process i sees GPUs i*K .. i*K+K-1 (CUDA_VISIBLE_DEVICES)
#   --port=P              coordinator port on 127.0.0.1 (default: a free port)
#   --module=M            Python module to run (default: vrl.main)
#   --grace_s=S           after one process fails, seconds before the others are killed (30)
#   --dry_run             print the command of every process instead of running it
#
# Each process's output is prefixed with "[pI] ". The exit code is the worst of the processes'
# (the largest). Ctrl-C / SIGTERM is forwarded to every process, so the training loop saves a
# checkpoint and exits, as on a preempted cluster.
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
  exit 2
}

cpu_devices=""
gpus_per_process=""
port=""
module="vrl.main"
grace_s=30
dry_run=0
num_processes=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --cpu_devices=*) cpu_devices="${1#*=}" ;;
    --gpus_per_process=*) gpus_per_process="${1#*=}" ;;
    --port=*) port="${1#*=}" ;;
    --module=*) module="${1#*=}" ;;
    --grace_s=*) grace_s="${1#*=}" ;;
    --dry_run) dry_run=1 ;;
    -h | --help) usage ;;
    --) shift; break ;;
    [0-9]*) num_processes="$1" ;;
    *) echo "local.sh: unknown argument '$1' (options go before '--'; see --help)" >&2; exit 2 ;;
  esac
  shift
done
if ! [[ "$num_processes" =~ ^[1-9][0-9]*$ ]]; then
  echo "local.sh: give the number of processes, e.g. 'launch/local.sh 2 -- --config=...'" >&2
  exit 2
fi
for value in "$cpu_devices" "$gpus_per_process" "$port"; do
  if [[ -n "$value" && ! "$value" =~ ^[1-9][0-9]*$ ]]; then
    echo "local.sh: '$value' is not a positive integer" >&2
    exit 2
  fi
done

python="${PYTHON:-python}"
if [[ -z "$port" ]]; then
  port="$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi

# Sets `cmd` to the command line of process $1; the rest of the arguments go to the module.
process_command() {
  local i="$1"
  shift
  cmd=(env)
  if [[ -n "$cpu_devices" ]]; then
    cmd+=(JAX_PLATFORMS=cpu)
  fi
  if [[ -n "$gpus_per_process" ]]; then
    local first=$((i * gpus_per_process)) ids=""
    for ((g = first; g < first + gpus_per_process; g++)); do ids+="${ids:+,}$g"; done
    cmd+=("CUDA_VISIBLE_DEVICES=$ids")
  fi
  cmd+=("$python" -m "$module" "$@"
    --distributed=yes
    "--coordinator_address=127.0.0.1:$port"
    "--num_processes=$num_processes"
    "--process_id=$i")
  if [[ -n "$cpu_devices" ]]; then
    cmd+=("--cpu_devices=$cpu_devices")
  fi
}

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

if [[ "$dry_run" == 1 ]]; then
  for ((i = 0; i < num_processes; i++)); do
    process_command "$i" "$@"
    show "${cmd[@]}"
  done
  exit 0
fi

# Job control: each process runs in its own process group (so it and its data-loader workers can
# be killed together); its output goes through a prefixer that is not in that group, so a SIGTERM
# to the process never cuts its last log lines.
set -m
pids=()
# shellcheck disable=SC2317,SC2329  # invoked by the trap below
forward_term() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
}
trap 'forward_term' INT TERM

for ((i = 0; i < num_processes; i++)); do
  process_command "$i" "$@"
  "${cmd[@]}" > >(sed -u "s/^/[p$i] /") 2>&1 &
  pids+=("$!")
done

worst=0
declare -A done_pids=()
failed_at=""
while [[ ${#done_pids[@]} -lt ${#pids[@]} ]]; do
  for pid in "${pids[@]}"; do
    if [[ -z "${done_pids[$pid]:-}" ]] && ! kill -0 "$pid" 2>/dev/null; then
      rc=0
      wait "$pid" || rc=$?
      done_pids[$pid]=1
      ((rc > worst)) && worst=$rc
      if ((rc != 0)) && [[ -z "$failed_at" ]]; then
        failed_at=$SECONDS
        echo "local.sh: a process exited with code $rc; stopping the others in ${grace_s}s" >&2
      fi
    fi
  done
  if [[ -n "$failed_at" ]] && ((SECONDS - failed_at >= grace_s)); then
    for pid in "${pids[@]}"; do
      [[ -z "${done_pids[$pid]:-}" ]] && kill -KILL -- "-$pid" 2>/dev/null
    done
  fi
  sleep 0.2
done
wait  # the log prefixers
exit "$worst"
