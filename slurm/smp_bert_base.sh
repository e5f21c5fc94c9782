#!/usr/bin/env bash
# SMP-S on BERT-base, MNLI (configs/smp_bert_base_mnli.yaml), one node.
#   sbatch slurm/smp_bert_base.sh
#   sbatch slurm/smp_bert_base.sh pruning.target_remaining=0.03 job.run_dir=runs/smp_3pct

# === Resources ==========================================================================
#SBATCH --job-name=smp-bert-base        # name in squeue and in the log file name
#SBATCH --nodes=1                       # nodes
#SBATCH --ntasks-per-node=1             # one launcher per node; torchrun starts the ranks
#SBATCH --gpus-per-node=8               # GPUs per node (keep GPUS_PER_NODE in step)
#SBATCH --cpus-per-task=32              # CPU cores for data loading
#SBATCH --mem=0                         # all of the node's memory
#SBATCH --time=12:00:00                 # wall-clock limit of one attempt
#SBATCH --signal=B:USR1@600             # USR1 to this script 10 minutes before the limit: checkpoint
#SBATCH --requeue                       # requeue after that checkpoint (and on node failure)
#SBATCH --open-mode=append              # keep every attempt's output in one log
#SBATCH --output=logs/%x-%j.out         # the job log

# === Run ================================================================================
CONFIG=${CONFIG:-configs/smp_bert_base_mnli.yaml}
RUN_DIR=${RUN_DIR:-runs/smp_bert_base_mnli}
source slurm/common.sh
launch "$CONFIG" "$RUN_DIR" "$@"
