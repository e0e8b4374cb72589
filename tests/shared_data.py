"""Where the project's read-only data sets live: ``../shared/data`` beside the repository
(CI lays a copy of ``shared/`` there too). A module of its own, not the conftest, so that
test modules can import it whichever conftest Python found first."""

from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
