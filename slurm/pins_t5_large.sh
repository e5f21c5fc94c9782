#!/usr/bin/env bash
# PINS on t5-large, WebNLG (configs/pins_t5_large.yaml), multi-node, ZeRO-3 with the teacher offloaded.
#   sbatch slurm/pins_t5_large.sh                                   # as configured
#   sbatch --nodes=4 slurm/pins_t5_large.sh training.max_steps=100  # overrides pass through
#   CONFIG=configs/tiny_pins_t5_webnlg.yaml RUN_DIR=runs/x GPUS_PER_NODE=2 sbatch --gpus-per-node=0 slurm/pins_t5_large.sh

# === Resources ==========================================================================
#SBATCH --job-name=pins-t5-large        # name in squeue and in the log file name
#SBATCH --nodes=2                       # nodes; the run uses every GPU of each
#SBATCH --ntasks-per-node=1             # one launcher per node; torchrun starts the ranks
#SBATCH --gpus-per-node=8               # GPUs per node (keep GPUS_PER_NODE in step)
#SBATCH --cpus-per-task=64              # CPU cores per node for data loading and the offloaded teacher
#SBATCH --mem=0                         # all of each node's memory (host-side teacher partitions)
#SBATCH --time=24:00:00                 # wall-clock limit of one attempt
#SBATCH --signal=B:USR1@600             # USR1 to this script 10 minutes before the limit: checkpoint
#SBATCH --requeue                       # requeue after that checkpoint (and on node failure)
#SBATCH --open-mode=append              # keep every attempt's output in one log
#SBATCH --output=logs/%x-%j.out         # the job log

# === Run ================================================================================
CONFIG=${CONFIG:-configs/pins_t5_large.yaml}
RUN_DIR=${RUN_DIR:-runs/pins_t5_large}
source slurm/common.sh
launch "$CONFIG" "$RUN_DIR" "$@"
