"""The on-disk feature cache computes once, then reads; stale or corrupt entries are redone."""

from __future__ import annotations

from pathlib import Path

import torch

from eqlosses_lab.data.features import cache_path, cached_features


class _Counter:
    def __init__(self, value: torch.Tensor) -> None:
        self.calls = 0
        self.value = value

    def __call__(self) -> torch.Tensor:
        self.calls += 1
        return self.value


def test_computes_once_then_reads(tmp_path: Path) -> None:
    fn = _Counter(torch.arange(6, dtype=torch.float32).reshape(2, 3))
    first = cached_features(tmp_path / "cache", "omniglot|lite0|112", fn)
    second = cached_features(tmp_path / "cache", "omniglot|lite0|112", fn)
    assert fn.calls == 1
    assert second.tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    assert torch.equal(first, second)
    assert cache_path(tmp_path / "cache", "omniglot|lite0|112").is_file()
    assert not list((tmp_path / "cache").glob("*.tmp"))


def test_different_keys_do_not_collide(tmp_path: Path) -> None:
    a = cached_features(tmp_path, "a", lambda: torch.zeros(2))
    b = cached_features(tmp_path, "b", lambda: torch.ones(2))
    assert a.tolist() == [0.0, 0.0]
    assert b.tolist() == [1.0, 1.0]
    assert cache_path(tmp_path, "a") != cache_path(tmp_path, "b")


def test_corrupt_entry_is_recomputed(tmp_path: Path) -> None:
    cache_path(tmp_path, "k").write_bytes(b"not a torch file")
    fn = _Counter(torch.full((3,), 7.0))
    assert cached_features(tmp_path, "k", fn).tolist() == [7.0, 7.0, 7.0]
    assert fn.calls == 1
    assert cached_features(tmp_path, "k", fn).tolist() == [7.0, 7.0, 7.0]
    assert fn.calls == 1


def test_entry_with_other_key_is_a_miss(tmp_path: Path) -> None:
    # Simulates a hash collision: the file under k's name holds another key.
    torch.save(
        {"version": 1, "key": "other", "features": torch.zeros(1)}, cache_path(tmp_path, "k")
    )
    fn = _Counter(torch.ones(1))
    assert cached_features(tmp_path, "k", fn).tolist() == [1.0]
    assert fn.calls == 1


def test_view_is_stored_alone(tmp_path: Path) -> None:
    big = torch.zeros(100_000)
    cached_features(tmp_path, "view", lambda: big[:4])
    assert cache_path(tmp_path, "view").stat().st_size < 10_000
