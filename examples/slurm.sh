#!/usr/bin/env bash
# FastZero on several nodes under Slurm: one torchrun per node, 8 GPUs per node, rendezvous on the
# first node. Submit with `sbatch examples/slurm.sh [more fastzero.train flags]`.
# --output-dir must be on a filesystem every node sees: each rank writes its checkpoint shard there.
#SBATCH --job-name=fastzero
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=24:00:00
set -euo pipefail

head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MODEL=${MODEL:-/models/Qwen2.5-7B}
OUT=${OUT:-runs/qwen2.5-7b-grpo-$SLURM_JOB_ID}

# A rerun of the same script with OUT set to an earlier run continues it: pass --resume "$OUT".
srun torchrun \
  --nnodes "$SLURM_NNODES" --nproc-per-node 8 \
  --rdzv-id "$SLURM_JOB_ID" --rdzv-backend c10d --rdzv-endpoint "$head_node:29500" \
  -m fastzero.train --preset qwen2.5-7b-grpo --model-path "$MODEL" --output-dir "$OUT" "$@"
