"""Train a reward model and publish it to the model store (`python scripts/train_reward_model.py --help`)."""

import sys

from app.training.trainer import main

if __name__ == "__main__":
    sys.exit(main())
