#!/usr/bin/env bash
# verl PPO/GRPO with the reward service as its custom reward function (app/adapters/verl.py), scored per
# sample by verl's reward loop with the `naive` reward manager (the default; the only path in verl 0.9.1).
# Install this repository in verl's environment (pip install -e /path/to/reward-service) so `app` imports.
# verl passes only the decoded response: put each sample's prompt in extra_info["prompt"] when preparing data.
# Scoring options not in verl's config schema need Hydra's `+` prefix: +...reward_kwargs.namespace=run-7.
# VERL_CONFIG=0.8 uses verl 0.8's top-level keys (custom_reward_function.*, reward_model.reward_manager).
set -euo pipefail
export REWARD_SERVICE_URL="${REWARD_SERVICE_URL:-http://127.0.0.1:8000}"  # comma-separated for failover
RUN_ID="${RUN_ID:-verl-$(date +%Y%m%d-%H%M%S)}"
ADAPTER="$(cd "$(dirname "$0")/.." && pwd)/app/adapters/verl.py"
case "${VERL_CONFIG:-0.9}" in
  0.8) REWARD=custom_reward_function; MANAGER=reward_model.reward_manager ;;
  *) REWARD=reward.custom_reward_function; MANAGER=reward.reward_manager.name ;;
esac

python3 -m verl.trainer.main_ppo \
  algorithm.adv_estimator=grpo \
  data.train_files="$HOME/data/gsm8k/train.parquet" \
  data.val_files="$HOME/data/gsm8k/test.parquet" \
  actor_rollout_ref.model.path=Qwen/Qwen2.5-0.5B-Instruct \
  "${MANAGER}=naive" \
  "${REWARD}.path=${ADAPTER}" \
  "${REWARD}.name=compute_score" \
  "+${REWARD}.reward_kwargs.namespace=${RUN_ID}" \
  "$@"
