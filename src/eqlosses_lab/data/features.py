"""A small on-disk cache for extracted features.

Extracting EfficientNet features of every Omniglot image takes minutes on a CPU, while the
loss comparison that uses them trains linear heads for seconds; caching the features makes
repeated experiments cheap.  Entries are ``.pt`` files named by a hash of a caller-chosen key,
and each file stores its key so that a hash collision or a stale file is never mistaken for a
hit.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

_FORMAT_VERSION = 1


def cache_path(cache_dir: str | Path, key: str) -> Path:
    """File that :func:`cached_features` uses for ``key`` inside ``cache_dir``."""
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]
    return Path(cache_dir) / f"features-{digest}.pt"


def _load(path: Path, key: str) -> torch.Tensor | None:
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        # A half-written or foreign file is a miss and gets overwritten; the unpickler can
        # fail on such a file with almost any exception type, so none is singled out.
        return None
    if (
        not isinstance(entry, dict)
        or entry.get("version") != _FORMAT_VERSION
        or entry.get("key") != key
        or not isinstance(entry.get("features"), torch.Tensor)
    ):
        return None
    features: torch.Tensor = entry["features"]
    return features


def cached_features(
    cache_dir: str | Path,
    key: str,
    compute_fn: Callable[[], torch.Tensor],
) -> torch.Tensor:
    """Return the tensor cached under ``key``, computing and storing it on a miss.

    Args:
        cache_dir: Folder of the cache (created if needed).
        key: Everything that determines the features, e.g.
            ``"omniglot-small|efficientnet-lite0|size=112|v1"``; change it whenever the
            extractor or the data change, since the cache cannot notice that by itself.
        compute_fn: Called with no argument on a miss; its result is stored detached, on the
            CPU.

    Returns:
        The cached (or freshly computed) tensor, on the CPU.
    """
    path = cache_path(cache_dir, key)
    if path.is_file():
        hit = _load(path, key)
        if hit is not None:
            return hit
    features = compute_fn()
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"compute_fn must return a torch.Tensor, got {type(features).__name__}")
    # clone() so a view into a larger tensor does not drag its whole storage into the file.
    features = features.detach().cpu().clone()
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write to a temporary file in the same folder and rename it into place, so an
    # interrupted run never leaves a truncated entry under the final name.
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save({"version": _FORMAT_VERSION, "key": key, "features": features}, handle)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return features
