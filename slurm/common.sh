# Shared by the job scripts in slurm/: validate, echo what runs, launch one torchrun per node, and turn
# SLURM's signals into a checkpoint (and, for the time-limit warning, a requeue).
#
# Knobs (environment, with defaults):
#   GPUS_PER_NODE   ranks per node (GPUs; on CPU-only nodes, processes)             8
#   MASTER_PORT     rendezvous port on the first node of the allocation             29500
#   VENV            virtual environment made by `make setup`                        .venv
#   SHUTDOWN_S      seconds the ranks get to checkpoint after a signal              600

set -euo pipefail

# === Environment ========================================================================
cd "${SLURM_SUBMIT_DIR:-$(pwd)}"
VENV=${VENV:-.venv}
export PATH="$VENV/bin:$PATH"
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
MASTER_PORT=${MASTER_PORT:-29500}
SHUTDOWN_S=${SHUTDOWN_S:-600}
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
NODES=${SLURM_JOB_NUM_NODES:-1}
export MASTER_ADDR MASTER_PORT
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( ${SLURM_CPUS_ON_NODE:-$GPUS_PER_NODE} / GPUS_PER_NODE > 0 ? ${SLURM_CPUS_ON_NODE:-$GPUS_PER_NODE} / GPUS_PER_NODE : 1 ))}

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
  echo "command: srun --ntasks-per-node=1 ${command[*]}"

  # USR1 (#SBATCH --signal, ahead of the time limit, or scancel --signal=USR1 --batch): checkpoint, then
  # requeue. TERM (scancel, preemption): checkpoint and stop. The ranks save at their next step boundary.
  local requeue=0
  trap 'echo "USR1: checkpointing, then requeueing"; requeue=1; kill -USR1 "$srun_pid" 2>/dev/null || true' USR1
  trap 'echo "TERM: checkpointing, then stopping"; kill -TERM "$srun_pid" 2>/dev/null || true' TERM
  srun --ntasks-per-node=1 --kill-on-bad-exit=1 "${command[@]}" &
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
  if [ "$requeue" = 1 ]; then
    echo "run not complete: requeueing job ${SLURM_JOB_ID}"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
  fi
  echo "run stopped (exit status $status) before completing: resubmit to resume from its checkpoint"
  exit "$status"
}
