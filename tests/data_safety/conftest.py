"""The data-safety suite: each test reproduces one situation of the adversarial review (issue "No command
destroys, mixes or silently misreads a user's data") and asserts the fixed behaviour."""

import sys
from pathlib import Path

# the shared helpers (nnunet_helpers, inference_model) live one folder up
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
