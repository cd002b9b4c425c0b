#!/usr/bin/env bash
# OpenRLHF PPO/GRPO with the reward service as its remote reward model.
# The service must be reachable from every Ray worker: RM_URL=http://<host>:8000 bash examples/openrlhf_remote_reward.sh
# Older OpenRLHF releases name the flag --remote_rm_url instead of --reward.remote_url (same value).
# Query parameters carry scoring options OpenRLHF cannot send: one namespace per run keeps its running statistics.
set -euo pipefail
RM_URL="${RM_URL:-http://127.0.0.1:8000}"
RUN_ID="${RUN_ID:-openrlhf-$(date +%Y%m%d-%H%M%S)}"

python3 -m openrlhf.cli.train_ppo_ray \
  --pretrain Qwen/Qwen2.5-0.5B-Instruct \
  --reward.remote_url "${RM_URL}/get_reward?namespace=${RUN_ID}&normalize=running" \
  --prompt_data OpenRLHF/prompt-collection-v0.1 \
  --input_key context_messages \
  --apply_chat_template \
  --save_path "./checkpoint/${RUN_ID}" \
  "$@"
