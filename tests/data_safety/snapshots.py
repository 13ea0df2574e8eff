"""Snapshots of folder trees, so a test can assert that nothing a command was not asked to change was changed."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def snapshot(folder: Path | str) -> dict[str, tuple]:
    """relative path -> ("link", target) | ("dir",) | ("file", sha256, mode) for everything under ``folder``
    (links are recorded, not followed)."""
    folder = Path(folder)
    tree: dict[str, tuple] = {}
    for root, dirs, files in os.walk(folder):
        for name in [*dirs, *files]:
            path = Path(root) / name
            key = str(path.relative_to(folder))
            if path.is_symlink():
                tree[key] = ("link", os.readlink(path))
            elif path.is_dir():
                tree[key] = ("dir",)
            else:
                tree[key] = ("file", hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mode & 0o777)
    return tree


def changes(before: dict[str, tuple], after: dict[str, tuple]) -> dict[str, list[str]]:
    """What differs between two snapshots: added, removed and changed paths (sorted)."""
    return {
        "added": sorted(set(after) - set(before)),
        "removed": sorted(set(before) - set(after)),
        "changed": sorted(key for key in set(before) & set(after) if before[key] != after[key]),
    }


def assert_unchanged(before: dict[str, tuple], after: dict[str, tuple], what: str = "tree") -> None:
    difference = changes(before, after)
    assert not any(difference.values()), f"{what} changed: {difference}"
