#!/usr/bin/env bash
# Spark resource discovery script for GPUs (spark.executor.resource.gpu.discoveryScript,
# spark.worker.resource.gpu.discoveryScript): prints {"name": "gpu", "addresses": ["0", ...]}.
# Addresses are nvidia-smi indices (PCI bus order; conf/gpu.yaml sets CUDA_DEVICE_ORDER=PCI_BUS_ID so
# TensorFlow numbers them the same way); vidspark places each task's model on the GPU it was assigned.
# Where CUDA_VISIBLE_DEVICES already lists the node's GPUs for this process (a resource manager or a
# container runtime narrowed them), the addresses are its entries as written (indices or GPU-/MIG-
# UUIDs), never renumbered: vidspark sets CUDA_VISIBLE_DEVICES to the one a task was given, so an
# address must name the same GPU as CUDA does.
set -euo pipefail
if [ "${CUDA_VISIBLE_DEVICES:-}" = "-1" ] || [ "${CUDA_VISIBLE_DEVICES-unset}" = "" ]; then
  addresses=""  # devices hidden on purpose: no GPUs
elif [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
  addresses=$(tr -d ' ' <<< "$CUDA_VISIBLE_DEVICES" | tr ',' '\n' | grep -v '^$' | sed 's/.*/"&"/' | paste -sd, -)
elif command -v nvidia-smi > /dev/null; then
  addresses=$(nvidia-smi --query-gpu=index --format=csv,noheader | tr -d ' ' | sed 's/.*/"&"/' | paste -sd, -)
else
  echo "get_gpus_resources.sh: nvidia-smi not found and CUDA_VISIBLE_DEVICES unset" >&2
  exit 1
fi
echo "{\"name\": \"gpu\", \"addresses\": [${addresses}]}"
