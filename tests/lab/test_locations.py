"""Where the lab looks for its data: the option, then the environment variable, then the
default; a data set found nowhere is one line naming both ways to point at it."""

from __future__ import annotations

from pathlib import Path

import pytest

from eqlosses.__main__ import main
from eqlosses_lab import benchmark
from eqlosses_lab.errors import DatasetNotFoundError
from eqlosses_lab.locations import CAMVID, FASHION_MNIST, LVIS_COUNTS, OMNIGLOT, DataSource

SOURCES = [FASHION_MNIST, OMNIGLOT, CAMVID, LVIS_COUNTS]


@pytest.mark.parametrize("source", SOURCES, ids=lambda s: s.variable)
def test_the_option_wins_then_the_variable_then_the_default(
    source: DataSource, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(source.variable, str(tmp_path / "from-variable"))
    assert source.locate(tmp_path / "given") == tmp_path / "given"
    assert source.locate(None) == tmp_path / "from-variable"
    monkeypatch.setenv(source.variable, "")  # set but empty: as if unset
    assert source.locate(None) == source.default
    monkeypatch.delenv(source.variable)
    assert source.locate(None) == source.default


def test_only_fashion_mnist_has_a_default() -> None:
    assert FASHION_MNIST.default == Path("/usr/share/datasets/fashion-mnist")
    assert OMNIGLOT.default is CAMVID.default is LVIS_COUNTS.default is None


@pytest.mark.parametrize("source", [OMNIGLOT, CAMVID], ids=lambda s: s.variable)
def test_a_data_set_without_a_location_is_one_line(
    source: DataSource, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(source.variable, raising=False)
    with pytest.raises(DatasetNotFoundError) as info:
        source.require(None)
    message = str(info.value)
    assert "\n" not in message
    assert "--data-dir" in message and source.variable in message


def test_the_benchmark_reads_the_counts_from_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    csv = tmp_path / "counts.csv"
    csv.write_text(
        "id,name,frequency,image_count,instance_count\n1,a,f,900,4000\n2,b,r,3,3\n3,c,c,40,80\n"
    )
    monkeypatch.setenv("EQLOSSES_LVIS_COUNTS", str(csv))
    path, how = benchmark._counts_argument(None)
    assert path == str(csv) and "EQLOSSES_LVIS_COUNTS" in how
    profile = benchmark.load_profile(path)
    assert profile.instance_counts.tolist() == [4000.0, 3.0, 80.0]
    # 'synthetic' and an explicit file both win over the variable
    assert benchmark._counts_argument("synthetic") == (None, "requested")
    monkeypatch.delenv("EQLOSSES_LVIS_COUNTS")
    assert benchmark._counts_argument(None)[0] is None


def test_missing_counts_file_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("EQLOSSES_LVIS_COUNTS", str(tmp_path / "gone.csv"))
    code = main(["benchmark", "--size", "smoke", "--losses", "efl/small", "--repeats", "1"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("eqlosses benchmark: LVIS category counts")
    assert "gone.csv" in err and "--lvis-counts" in err and "EQLOSSES_LVIS_COUNTS" in err
