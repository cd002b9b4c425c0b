"""Import a local Hugging Face reward model into a model store (see `python scripts/import_reward_model.py
--help`)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from app.training.import_model import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
