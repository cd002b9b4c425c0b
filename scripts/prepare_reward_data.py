"""Prepare preference pairs for reward-model training (see `python scripts/prepare_reward_data.py --help`)."""

import sys

from app.training.prepare import main

if __name__ == "__main__":
    sys.exit(main())
