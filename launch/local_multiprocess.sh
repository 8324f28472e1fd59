#!/usr/bin/env bash
# N plug_jax processes on this machine, joined through jax.distributed (CPU: gloo).
#
#   launch/local_multiprocess.sh N GIN_FILE [extra flags, e.g. --gin.MODEL_DIR=/tmp/run]
#
# Environment:
#   DEVICES_PER_PROCESS  fake CPU devices per process (default 1; N * this = global devices)
#   MODE                 train | eval | infer (default train)
#   PORT                 coordinator port on 127.0.0.1 (default: a free one)
#   PYTHON               interpreter with plug_jax installed (default: .venv/bin/python if
#                        present, else python3)
#   GRACE                seconds the others get after SIGTERM before SIGKILL (default 10)
#
# Every output line is prefixed with [pI]. When a process exits non-zero the others are
# stopped and this script exits with that status; Ctrl-C / SIGTERM stops all of them.
# See docs/launch.md.
set -uo pipefail

if [ $# -lt 2 ]; then
  echo "usage: $0 N GIN_FILE [extra plug_jax flags]" >&2
  exit 2
fi
N=$1; GIN=$2; shift 2
if ! [[ "$N" =~ ^[1-9][0-9]*$ ]]; then
  echo "error: N must be a positive integer, got '$N'" >&2
  exit 2
fi
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
DEVICES=${DEVICES_PER_PROCESS:-1}
MODE=${MODE:-train}
GRACE=${GRACE:-10}
PORT=${PORT:-$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}

export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
# The device count comes from --num_cpu_devices, not from a leftover XLA flag.
XLA_FLAGS="$(echo "${XLA_FLAGS:-}" | sed -E 's/--xla_force_host_platform_device_count=[^ ]*//g')"
export XLA_FLAGS
export PYTHONUNBUFFERED=1

echo "launching $N processes x $DEVICES CPU device(s), coordinator 127.0.0.1:$PORT" >&2
pids=()
for ((i = 0; i < N; i++)); do
  "$PYTHON" -m plug_jax.main --mode="$MODE" --gin_file="$GIN" \
    --coordinator_address="127.0.0.1:$PORT" --num_processes="$N" --process_id="$i" \
    --num_cpu_devices="$DEVICES" "$@" \
    > >(sed -u "s/^/[p$i] /") 2> >(sed -u "s/^/[p$i] /" >&2) &
  pids+=($!)
done

stop_all() {  # stop_all SIGNAL: signal the live processes, then SIGKILL after GRACE s
  local sig=$1 p t
  for p in "${pids[@]}"; do kill -s "$sig" "$p" 2>/dev/null; done
  for ((t = 0; t < GRACE * 10; t++)); do
    local alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && return
    sleep 0.1
  done
  for p in "${pids[@]}"; do kill -s KILL "$p" 2>/dev/null; done
}
trap 'echo "launcher: interrupted; stopping all processes" >&2; stop_all TERM; wait; exit 130' INT TERM

live=("${pids[@]}")
status=0
while [ ${#live[@]} -gt 0 ]; do
  done_pid=
  wait -n -p done_pid "${live[@]}"
  rc=$?
  [ -z "$done_pid" ] && break  # no child left
  idx=-1
  for ((i = 0; i < N; i++)); do [ "${pids[$i]}" = "$done_pid" ] && idx=$i; done
  rest=()
  for p in "${live[@]}"; do [ "$p" != "$done_pid" ] && rest+=("$p"); done
  live=("${rest[@]}")
  if [ $rc -ne 0 ]; then
    echo "launcher: process $idx exited with status $rc; stopping the others" >&2
    status=$rc
    stop_all TERM
    wait 2>/dev/null
    break
  fi
done
wait 2>/dev/null  # the output filters
exit $status
