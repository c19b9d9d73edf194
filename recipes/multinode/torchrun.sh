#!/usr/bin/env bash
# Multi-node fine-tuning with torchrun: no ssh and no pdsh; start this script on every node.
#
#   node 0:  NODE_RANK=0 MASTER_ADDR=10.0.0.1 NNODES=2 bash recipes/multinode/torchrun.sh
#   node 1:  NODE_RANK=1 MASTER_ADDR=10.0.0.1 NNODES=2 bash recipes/multinode/torchrun.sh
#
# MASTER_ADDR is node 0's address as the other nodes reach it. Arguments after the script name go to
# finetune/sft.py and override the recipe (e.g. --model_name_or_path /models/Baichuan2-13B-Base).
# Global batch = per_device_train_batch_size x gradient_accumulation_steps x NNODES x GPUS_PER_NODE.
# Network: export NCCL_SOCKET_IFNAME (GPU) or HCCL_* (Ascend NPU) here, before torchrun, on every node.
set -euo pipefail
cd "$(dirname "$0")/../.."

: "${NODE_RANK:?set NODE_RANK: 0 on the master node, 1..NNODES-1 on the others}"
: "${MASTER_ADDR:?set MASTER_ADDR to the IP address of node 0}"
NNODES=${NNODES:-2}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
MASTER_PORT=${MASTER_PORT:-29500}
RECIPE=${RECIPE:-recipes/multinode/baichuan2_13b_full_zero3.yaml}

exec .venv/bin/torchrun \
    --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$GPUS_PER_NODE" \
    --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
    finetune/sft.py --config "$RECIPE" "$@"
