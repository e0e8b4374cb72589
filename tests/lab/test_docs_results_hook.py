"""The documentation's results hook: markers become tables and numbers from the results
files, and a marker it cannot fill fails the build, naming the file."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

# the hook runs inside MkDocs (the docs extra)
PluginError = pytest.importorskip("mkdocs.exceptions").PluginError

HOOK = Path(__file__).resolve().parents[2] / "docs" / "hooks" / "results.py"


@pytest.fixture(scope="module")
def hook() -> ModuleType:
    spec = importlib.util.spec_from_file_location("results_hook", HOOK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(loss: str, seed: int, **metrics: float) -> dict[str, Any]:
    return {"loss": loss, "seed": seed, "metrics": metrics}


def _comparison() -> dict[str, Any]:
    """Two losses, two seeds; the second beats the first on 'tail' on both seeds by more
    than the spreads, and ties on 'overall'."""
    return {
        "config": {"losses": ["ce", "eq"], "epochs": 6, "data": {"ratio": 100}},
        "runs": [
            _run("ce", 0, overall=0.40, tail=0.10),
            _run("ce", 1, overall=0.60, tail=0.12),
            _run("eq", 0, overall=0.45, tail=0.50),
            _run("eq", 1, overall=0.55, tail=0.54),
        ],
    }


def _page(
    tmp_path: Path, markdown: str, payloads: dict[str, dict[str, Any]], hook: ModuleType
) -> str:
    for name, payload in payloads.items():
        folder = tmp_path / "results" / name
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(json.dumps(payload))
    page = SimpleNamespace(file=SimpleNamespace(src_uri="page.md"))
    config = SimpleNamespace(docs_dir=str(tmp_path))
    rendered: str = hook.on_page_markdown(markdown, page=page, config=config, files=None)
    return rendered


def test_table_marker_renders_mean_std_and_verdicts(tmp_path: Path, hook: ModuleType) -> None:
    markdown = "before\n\n<!-- results-table: cls/a metrics=overall,tail baseline=ce -->\n\nafter\n"
    rendered = _page(tmp_path, markdown, {"cls/a": _comparison()}, hook)
    lines = rendered.splitlines()
    assert lines[0] == "before" and lines[-1] == "after"
    assert "| loss | seeds | overall | tail | vs ce |" in lines
    # ce: overall (40, 60) -> 50.0 ± 14.1; tail (10, 12) -> 11.0 ± 1.4
    assert "| `ce` | 2 | 50.0 ± 14.1 | 11.0 ± 1.4 | baseline |" in lines
    # eq: overall (45, 55) -> 50.0 ± 7.1, a tie; tail (50, 54) -> 52.0 ± 2.8, a win
    assert "| `eq` | 2 | 50.0 ± 7.1 | 52.0 ± 2.8 | overall= tail↑ |" in lines
    assert "results-table" not in rendered


def test_value_marker_follows_the_pointer_reduces_and_formats(
    tmp_path: Path, hook: ModuleType
) -> None:
    payload = {"runs": [{"sizes": [6000, 300, 60]}], "share": 0.0481, "config": {"k.v": 3}}
    markdown = (
        "<!-- results-value: x path=/runs/0/sizes reduce=sum format=, --> images, "
        "<!-- results-value: x path=/share scale=100 format=.1f --> %, "
        "<!-- results-value: x path=/config/k.v -->"
    )
    assert _page(tmp_path, markdown, {"x": payload}, hook) == "6,360 images, 4.8 %, 3"


def test_config_marker_lists_nested_settings(tmp_path: Path, hook: ModuleType) -> None:
    rendered = _page(tmp_path, "<!-- results-config: cls/a -->", {"cls/a": _comparison()}, hook)
    assert "| `losses` | ce, eq |" in rendered
    assert "| `data.ratio` | 100 |" in rendered


def test_missing_results_file_fails_naming_it(tmp_path: Path, hook: ModuleType) -> None:
    markdown = "<!-- results-table: nowhere/else metrics=tail baseline=ce -->"
    with pytest.raises(PluginError) as error:
        _page(tmp_path, markdown, {}, hook)
    expected = tmp_path / "results" / "nowhere" / "else" / "results.json"
    assert str(expected) in str(error.value)
    assert "page.md" in str(error.value)


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        ("<!-- results-table: cls/a metrics=overall,rare baseline=ce -->", "rare"),
        ("<!-- results-table: cls/a metrics=overall baseline=focal -->", "focal"),
        ("<!-- results-table: cls/a metrics=overall -->", "baseline="),
        ("<!-- results-chart: cls/a -->", "unknown marker kind 'chart'"),
        ("<!-- results-config: cls/a colour=red -->", "colour"),
        ("<!-- results-value: cls/a path=/runs/9/loss -->", "'9'"),
        ("<!-- results-value: cls/a path=config.epochs -->", "JSON Pointer"),
        ("<!-- results-value: cls/a path=/config/losses reduce=mode -->", "mode"),
    ],
)
def test_a_marker_the_file_cannot_fill_fails(
    tmp_path: Path, hook: ModuleType, marker: str, message: str
) -> None:
    with pytest.raises(PluginError) as error:
        _page(tmp_path, marker, {"cls/a": _comparison()}, hook)
    assert message in str(error.value)
    assert str(error.value).startswith(f"page.md: {marker}: ")


def test_the_build_lists_every_missing_results_file_first(tmp_path: Path, hook: ModuleType) -> None:
    (tmp_path / "results" / "present").mkdir(parents=True)
    (tmp_path / "results" / "present" / "results.json").write_text("{}")
    pages = [
        SimpleNamespace(
            src_uri="a.md",
            content_string="<!-- results-config: present -->\n<!-- results-config: gone/one -->",
        ),
        SimpleNamespace(
            src_uri="b.md", content_string="x <!-- results-value: gone/two path=/a -->"
        ),
    ]
    files = SimpleNamespace(documentation_pages=lambda: pages)
    with pytest.raises(PluginError) as error:
        hook.on_files(files, config=SimpleNamespace(docs_dir=str(tmp_path)))
    message = str(error.value)
    assert f"{tmp_path / 'results' / 'gone' / 'one' / 'results.json'} (for a.md)" in message
    assert f"{tmp_path / 'results' / 'gone' / 'two' / 'results.json'} (for b.md)" in message
    assert "present" not in message
