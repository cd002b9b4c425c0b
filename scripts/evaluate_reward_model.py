"""Evaluate a published reward model on pair files (see `python scripts/evaluate_reward_model.py --help`)."""

import sys

from app.training.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
