"""TRL GRPOTrainer with the reward service as its reward function.

    pip install -e ".[trl]"
    REWARD_SERVICE_URL=http://127.0.0.1:8000 python examples/trl_grpo.py

Standard (string) and conversational ({"role", "content"}) datasets both work; this one is conversational.
"""

from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from app.adapters.trl import as_trl_reward_func

QUESTIONS = ["How do I boil an egg?", "Explain why the sky is blue.", "Write a haiku about rivers."]

# REWARD_SERVICE_URL (comma-separated for failover) and REWARD_SERVICE_* options configure the client;
# on_error="none" turns a failed request into a missing reward (NaN, skipped by TRL) instead of a crash.
reward_service = as_trl_reward_func(namespace="trl-grpo-example", on_error="none")

trainer = GRPOTrainer(
    model="Qwen/Qwen2.5-0.5B-Instruct",
    reward_funcs=reward_service,
    args=GRPOConfig(
        output_dir="grpo-reward-service",
        num_generations=4,
        per_device_train_batch_size=4,
        max_completion_length=128,
        max_steps=10,
        logging_steps=1,
        report_to="none",
    ),  # fmt: skip
    train_dataset=Dataset.from_dict({"prompt": [[{"role": "user", "content": q}] for q in QUESTIONS]}),
)
trainer.train()
