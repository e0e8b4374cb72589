"""The epoch loop's optional progress bar, shared by every task."""

from __future__ import annotations

from typing import Any


def epoch_iterator(num_epochs: int, description: str, show: bool) -> Any:
    """``range(num_epochs)``, wrapped in a tqdm bar when ``show`` (tqdm is imported only
    then, so the quiet path needs none)."""
    if not show:
        return range(num_epochs)
    from tqdm import tqdm

    return tqdm(range(num_epochs), desc=description, leave=False, unit="epoch")
