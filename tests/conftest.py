"""Shared test fixtures: where the project's read-only data sets live."""

from __future__ import annotations

from pathlib import Path

import pytest

# ../shared/data beside the repository (CI lays a copy of shared/ there too)
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def omniglot_dir() -> Path:
    folder = SHARED_DATA / "omniglot-small"
    if not folder.is_dir():
        pytest.skip(f"{folder} is not present")
    return folder
