"""The data-safety suite: each test reproduces one situation of the adversarial review (issue "No command
destroys, mixes or silently misreads a user's data") and asserts the fixed behaviour."""

import sys
from pathlib import Path

# the shared helpers (nnunet_helpers, inference_model) live one folder up
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import os
import tempfile

import pytest


def _cannot_write(folder: Path) -> bool:
    try:
        handle, probe = tempfile.mkstemp(dir=folder)
    except OSError:
        return True
    os.close(handle)
    os.unlink(probe)
    return False


@pytest.fixture
def read_only_folder(tmp_path):
    """An existing folder this process cannot write into: a chmod 555 folder for ordinary users; as root (CI
    runs as root, and root ignores permission bits) sysfs, which refuses new files even to root."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        chosen = folder if _cannot_write(folder) else Path("/sys")
        assert _cannot_write(chosen), f"no folder on this machine refuses writes to uid {os.getuid()}"
        yield chosen
    finally:
        folder.chmod(0o755)
