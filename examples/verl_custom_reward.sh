#!/usr/bin/env bash
# verl PPO/GRPO with the reward service as its custom reward function (app/adapters/verl.py).
# Install this repository in verl's environment (pip install -e /path/to/reward-service) so `app` imports.
# verl passes only the decoded response: put each sample's prompt in extra_info["prompt"] when preparing data.
# The batch reward manager scores a whole batch in a few requests; for per-sample managers use compute_score.
set -euo pipefail
export REWARD_SERVICE_URL="${REWARD_SERVICE_URL:-http://127.0.0.1:8000}"  # comma-separated for failover
export REWARD_SERVICE_NAMESPACE="${REWARD_SERVICE_NAMESPACE:-verl-$(date +%Y%m%d-%H%M%S)}"
ADAPTER="$(cd "$(dirname "$0")/.." && pwd)/app/adapters/verl.py"

python3 -m verl.trainer.main_ppo \
  algorithm.adv_estimator=grpo \
  data.train_files="$HOME/data/gsm8k/train.parquet" \
  data.val_files="$HOME/data/gsm8k/test.parquet" \
  actor_rollout_ref.model.path=Qwen/Qwen2.5-0.5B-Instruct \
  reward_model.enable=False \
  reward_model.reward_manager=batch \
  custom_reward_function.path="${ADAPTER}" \
  custom_reward_function.name=compute_score_batch \
  "$@"
