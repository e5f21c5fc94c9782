# Shared by the job scripts in slurm/: validate, echo what runs, launch one torchrun per node, turn SLURM's
# signals into a checkpoint (and, for the time-limit warning, a requeue), and requeue a job whose ranks
# failed (a node lost, a rank killed) after it saved a checkpoint.
#
# Knobs (environment, with defaults):
#   GPUS_PER_NODE   ranks per node (GPUs; on CPU-only nodes, processes)             8
#   MASTER_PORT     rendezvous port on the first node of the allocation             from the job id
#   VENV            virtual environment made by `make setup`                        .venv
#   SHUTDOWN_S      seconds the ranks get to checkpoint after a signal              600
#   RDZV_TIMEOUT_S  seconds the nodes' torchrun agents wait for each other          600

set -euo pipefail

# === Environment ========================================================================
cd "${SLURM_SUBMIT_DIR:-$(pwd)}"
VENV=${VENV:-.venv}
export PATH="$VENV/bin:$PATH"
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
SHUTDOWN_S=${SHUTDOWN_S:-600}
RDZV_TIMEOUT_S=${RDZV_TIMEOUT_S:-600}
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
NODES=${SLURM_JOB_NUM_NODES:-1}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( ${SLURM_CPUS_ON_NODE:-$GPUS_PER_NODE} / GPUS_PER_NODE > 0 ? ${SLURM_CPUS_ON_NODE:-$GPUS_PER_NODE} / GPUS_PER_NODE : 1 ))}

# === Rendezvous port ====================================================================
# This script runs on the first node of the allocation, where torchrun's store will listen. Jobs sharing
# a node must not share a port: the second job's store could not bind, and torchrun would join the first
# job's store instead, silently, and die with it. So the port comes from the job id (10000-29999, below
# the ephemeral range), moved up past ports in use on this node; a MASTER_PORT given and in use stops the
# job. torchrun is also told which node hosts the store (see launch), so that a port taken in between
# fails the job rather than joining another.
port_free() {
  python -c 'import socket, sys; socket.socket().bind(("", int(sys.argv[1])))' "$1" 2>/dev/null
}
if [ -n "${MASTER_PORT:-}" ]; then
  port_free "$MASTER_PORT" || {
    echo "MASTER_PORT $MASTER_PORT is in use on $(hostname) (another job's rendezvous?); unset it to let the job pick a free port" >&2
    exit 2; }
else
  MASTER_PORT=$(( 10000 + SLURM_JOB_ID % 20000 ))
  for _ in $(seq 100); do port_free "$MASTER_PORT" && break; MASTER_PORT=$(( MASTER_PORT + 1 )); done
  port_free "$MASTER_PORT" || { echo "no free rendezvous port from $(( 10000 + SLURM_JOB_ID % 20000 )) on $(hostname)" >&2; exit 2; }
fi
export MASTER_ADDR MASTER_PORT

# === Launch =============================================================================
# launch CONFIG RUN_DIR [section.key=value ...]
launch() {
  local config=$1 run_dir=$2
  shift 2
  local world=$(( NODES * GPUS_PER_NODE ))
  echo "job ${SLURM_JOB_ID} (restart ${SLURM_RESTART_COUNT:-0}) on ${SLURM_JOB_NODELIST}: ${NODES} node(s) x ${GPUS_PER_NODE} ranks"
  echo "commit $(git rev-parse HEAD 2>/dev/null || echo unknown)"

  # A config that does not validate stops the job here, before any rank starts (and is not requeued).
  WORLD_SIZE=$world python -m launch.train --check --config "$config" "job.run_dir=$run_dir" "$@" || exit 2

  local command=(torchrun --nnodes "$NODES" --nproc_per_node "$GPUS_PER_NODE"
    --rdzv_backend c10d --rdzv_endpoint "$MASTER_ADDR:$MASTER_PORT" --rdzv_id "$SLURM_JOB_ID"
    --signals-to-handle SIGTERM,SIGINT,SIGUSR1 --shutdown-timeout "$SHUTDOWN_S"
    launch/train.py --config "$config" "job.run_dir=$run_dir" "$@")
  # Each node's torchrun is told whether it hosts the store (SLURM_NODEID 0): the host fails on a taken port
  # instead of falling back to joining whatever store listens there. join_timeout bounds the wait for a node
  # that never arrives (down, or its torchrun pointed elsewhere). An agent that fails records why in its
  # node's error file, from which the end of this script names a failed rendezvous in one line.
  local errors="$run_dir/torchrun_errors"
  rm -rf "$errors" && mkdir -p "$errors"
  local per_node='export TORCHELASTIC_ERROR_FILE="$1/node$SLURM_NODEID.json"
exec "$3" --rdzv_conf "is_host=$(( SLURM_NODEID == 0 )),join_timeout=$2" "${@:4}"'
  echo "command: srun --nodes=$NODES --ntasks=$NODES --ntasks-per-node=1 ${command[*]} (torchrun with --rdzv_conf is_host=1 on the first node, 0 elsewhere; join_timeout=$RDZV_TIMEOUT_S)"

  # USR1 (#SBATCH --signal, ahead of the time limit, or scancel --signal=USR1 --batch): checkpoint, then
  # requeue. TERM (scancel, preemption): checkpoint and stop. The ranks save at their next step boundary.
  local requeue=0 stop=0
  trap 'echo "USR1: checkpointing, then requeueing"; requeue=1; kill -USR1 "$srun_pid" 2>/dev/null || true' USR1
  trap 'echo "TERM: checkpointing, then stopping"; stop=1; kill -TERM "$srun_pid" 2>/dev/null || true' TERM
  local latest="$run_dir/checkpoints/latest" saved_before saved_after
  saved_before=$(cat "$latest" 2>/dev/null || true)
  # One task per node, counted explicitly: a job requeued onto fewer nodes (scontrol update NumNodes) keeps the
  # task count it was submitted with in SLURM_NTASKS, and srun would start two hosts on one node.
  srun --nodes="$NODES" --ntasks="$NODES" --ntasks-per-node=1 --kill-on-bad-exit=1 \
    bash -c "$per_node" node "$errors" "$RDZV_TIMEOUT_S" "${command[@]}" &
  srun_pid=$!
  local status=0
  while kill -0 "$srun_pid" 2>/dev/null; do
    wait "$srun_pid" && status=0 || status=$?   # returns early when a trapped signal arrives
  done
  # Complete only if COMPLETED records this config's run: a marker left by a shorter run (max_steps since
  # raised) or by another run in the same directory must not end the job.
  if WORLD_SIZE=$world python -m launch.train --completed --config "$config" "job.run_dir=$run_dir" "$@"; then
    echo "run complete: $run_dir"
    exit 0
  fi
  # After a signal the launcher's exit status says nothing: torchrun forwards the signal to its ranks, waits
  # for them (they save and exit 75, RESUMABLE_EXIT) and then exits 1, because its agent re-raises the
  # SignalException its handler raised; a rank that exits 75 on a signal sent to it directly is a failed child
  # to torchrun, again 1. (The deepspeed launcher passes 75 on.) So the decisions rest on the signal this
  # script trapped and on whether the ranks saved a new checkpoint, and mean the same under either launcher.
  saved_after=$(cat "$latest" 2>/dev/null || true)
  local new_checkpoint=""
  if [ -n "$saved_after" ] && [ "$saved_after" != "$saved_before" ]; then new_checkpoint=$saved_after; fi
  if [ "$requeue" = 1 ]; then
    echo "USR1: the ranks stopped (launcher exit status $status) after saving ${new_checkpoint:-no new checkpoint}"
    echo "run not complete: requeueing job ${SLURM_JOB_ID}"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
  fi
  if [ "$stop" = 1 ] && [ -n "$new_checkpoint" ]; then
    echo "TERM: the ranks stopped after saving $new_checkpoint (launcher exit status $status): resubmit to resume from it"
    exit 75
  fi
  # The ranks failed unasked: a node or a rank died (srun's --kill-on-bad-exit then ends the other nodes'
  # ranks at once, none waits on a dead peer), or a collective broke; or a signal reached the ranks and not
  # this script (scancel --signal without --batch), and they saved and stopped. Requeue if this attempt saved
  # a checkpoint, so the requeued job resumes past where this one started; a failure that repeats before
  # the next checkpoint (a bug, bad data) then stops the job instead of requeueing it forever.
  if [ "$stop" = 0 ] && [ "$status" != 0 ] && [ -n "$new_checkpoint" ]; then
    echo "ranks failed (exit status $status) after saving $new_checkpoint: requeueing job ${SLURM_JOB_ID} to resume from it"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
  fi
  local rendezvous
  rendezvous=$(rendezvous_failure "$errors")
  if [ -n "$rendezvous" ]; then
    echo "$rendezvous"
    echo "rendezvous failed at $MASTER_ADDR:$MASTER_PORT (exit status $status), no rank started: the job stops; the run directory is as it was"
    exit "$status"
  fi
  echo "run stopped (exit status $status) before completing: resubmit to resume from its checkpoint"
  exit "$status"
}

# rendezvous_failure ERRORS_DIR: one line per node whose torchrun agent failed at the rendezvous (from the
# error files the agents write), empty if none did.
rendezvous_failure() {
  python - "$1" "$RDZV_TIMEOUT_S" <<'PY'
import json, pathlib, sys

errors, timeout_s = pathlib.Path(sys.argv[1]), sys.argv[2]
for path in sorted(errors.glob("node*.json")):
    try:
        message = json.loads(path.read_text())["message"]["message"].strip()
    except (OSError, ValueError, KeyError, TypeError):
        continue
    node = path.stem.removeprefix("node")
    if message.startswith("RendezvousTimeoutError"):
        print(f"rendezvous error on node {node}: not every node's torchrun joined within {timeout_s} s "
              "(RDZV_TIMEOUT_S): a node down or unreachable, or its torchrun started with another endpoint")
    elif message.startswith("Rendezvous"):
        print(f"rendezvous error on node {node}: {message.splitlines()[0]} (the store's port taken on the "
              "first node, or the first node unreachable)")
PY
}
