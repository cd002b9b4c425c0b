"""Prepare preference pairs for reward-model training (see `python scripts/prepare_reward_data.py --help`)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from app.training.prepare import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
