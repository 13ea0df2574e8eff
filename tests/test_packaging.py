"""What a non-editable install ships: every package of the source tree must be listed in pyproject.toml.

setuptools installs only the packages named in ``[tool.setuptools] packages``; an editable install (CI's) finds
unlisted sub-packages through the source folder anyway, so a missing entry shows only after ``pip install .``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]


def _declared() -> tuple[set[str], dict[str, str]]:
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return set(settings["packages"]), settings.get("package-dir", {})


def test_every_package_folder_is_declared():
    packages, package_dir = _declared()
    found = set()
    for name, folder in package_dir.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder)
            if "__pycache__" in relative.parts:
                continue
            found.add(".".join((name, *relative.parts)))
    assert found, "no package found: the package-dir mapping changed"
    missing = sorted(found - packages)
    assert not missing, f"packages a wheel would leave out; add them to pyproject.toml: {missing}"
    stale = sorted(packages - found)
    assert not stale, f"declared packages with no folder: {stale}"
