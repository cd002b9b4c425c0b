"""Import a local Hugging Face reward model into a model store (see `python scripts/import_reward_model.py
--help`)."""

import sys

from app.training.import_model import main

if __name__ == "__main__":
    sys.exit(main())
