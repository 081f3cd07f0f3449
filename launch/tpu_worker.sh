#!/usr/bin/env bash
# Runs on every worker of a TPU slice, started there by launch/tpu_pod.sh: trains with the given
# vrl.main arguments, prefixes the output with the host name, and copies the log and the exit
# code to LOGS/HOST.log and LOGS/HOST.rc every minute and at the end (a worker's disk goes
# with its slice).
#
#   launch/tpu_worker.sh LOGS_URL -- <vrl.main args>
#
# Exits with the run's code, except that a run preempted after saving its step (exit 0 after
# the preemption notice) exits 75, so that the launcher runs it again instead of calling it done.
set -uo pipefail

if [[ $# -lt 2 || "$2" != -- ]]; then
  echo "tpu_worker.sh: usage: tpu_worker.sh LOGS_URL -- <vrl.main args>" >&2
  exit 2
fi
logs="${1%/}"
shift 2
python="$HOME/vrl-env/bin/python"
host="$(hostname)"
log="$HOME/vrl-run.log"

upload() {
  gcloud storage cp "$1" "$2" >/dev/null 2>&1 || echo "[$host] could not copy $1 to $2" >&2
}

(while sleep 60; do upload "$log" "$logs/$host.log"; done) >/dev/null 2>&1 &
uploader=$!
# A preemption sends SIGTERM to every process: the trainer saves and exits, while tee and sed
# ignore it so that they pass on its last lines.
trap '' TERM
"$python" -m vrl.main "$@" 2>&1 | tee "$log" | sed -u "s/^/[$host] /"
rc=${PIPESTATUS[0]}
kill "$uploader" 2>/dev/null
if [[ "$rc" == 0 ]] &&
  grep -q -e "after the preemption notice" -e "^Preempted: SIGTERM" "$log"; then
  rc=75
fi
echo "$rc" >"$HOME/vrl-run.rc"
upload "$log" "$logs/$host.log"
upload "$HOME/vrl-run.rc" "$logs/$host.rc"
exit "$rc"
