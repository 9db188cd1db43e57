"""The HTML report: one self-contained page, built from whatever a run directory holds."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from wmlab.core.errors import RunDirectoryError
from wmlab.report import build_report, register_section, registered_sections, unregister_section
from wmlab.report.html import read_metrics

MALICIOUS = "<script>alert('owned')</script>"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The smallest valid GIF: one transparent pixel.
TINY_GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")


def _write_png(path: Path, color: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(1, 1), dpi=20)
    FigureCanvasAgg(figure)
    figure.add_subplot().bar([0], [1], color=color)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")


def _write_metrics(path: Path) -> None:
    records = []
    for index in range(1, 6):
        step = index * 1000
        records.append({"step": step, "time": index * 2.5, "train/episode_return": float(index)})
        records.append({"step": step, "loss/model": 1.0 / index, "loss/value": 0.5 / index})
        if index % 2 == 0:
            evaluation = {"eval/return": 10.0 * index, "eval/length": 200}
            records.append({"step": step, "time": index * 2.6, **evaluation})
    lines = [json.dumps(record) for record in records]
    # A run that crashed while writing its last line.
    lines.append('{"step": 6000, "train/episode_return": 99')
    path.write_text("\n".join(lines))


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "dyna-maze"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(
        json.dumps(
            {
                "algorithm": "dyna-q",
                "env": "dyna-maze",
                "seed": 7,
                "optimizer": {"learning_rate": 0.1, "schedule": {"warmup": 10}},
                "note": MALICIOUS,
            }
        )
    )
    (run_dir / "summary.json").write_text(json.dumps({"final_return": 123.5, "episodes": 50}))
    _write_metrics(run_dir / "metrics.jsonl")
    _write_png(run_dir / "figures" / "maze_steps.png", "tab:blue")
    _write_png(run_dir / "figures" / "value_map.png", "tab:orange")
    (run_dir / "bench").mkdir()
    (run_dir / "bench" / "dyna.json").write_text(
        json.dumps(
            {
                "tables": [
                    {
                        "title": "steps per episode",
                        "columns": ["planning steps", "episode 2", "episode 50"],
                        "rows": [[0, 1234, 17], [50, 77, 14.25]],
                    }
                ],
                "figures": ["figures/maze_steps.png", "../outside.png"],
                "settings": {"runs": 30, "planner": {"n": 50}},
            }
        )
    )
    _write_png(run_dir.parent / "outside.png", "tab:red")
    (run_dir / "videos").mkdir()
    (run_dir / "videos" / "rollout.gif").write_bytes(TINY_GIF)
    (run_dir / "videos" / "dream.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not a real video")
    return run_dir


@pytest.fixture(scope="module")
def page(full_run: Path) -> str:
    path = build_report(full_run)
    assert path == full_run / "report.html"
    return path.read_text(encoding="utf-8")


@pytest.fixture
def clean_sections():
    before = registered_sections()
    yield
    for name in registered_sections():
        if name not in before:
            unregister_section(name)


def test_title_names_run_algorithm_and_environment(page: str) -> None:
    title = re.search(r"<title>(.*?)</title>", page).group(1)
    assert "dyna-maze" in title and "dyna-q" in title
    assert re.search(r"Generated \d{4}-\d{2}-\d{2}", page)


def test_summary_and_bench_values_are_shown(page: str) -> None:
    assert "final_return" in page and "123.5" in page
    for value in ("steps per episode", "planning steps", "1234", "14.25"):
        assert value in page
    # The bench settings are flattened like the config.
    assert "planner.n" in page


def test_config_is_flattened_and_text_escaped(page: str) -> None:
    assert "optimizer.schedule.warmup" in page
    assert "optimizer.learning_rate" in page
    assert "<script" not in page.lower()
    assert "&lt;script&gt;" in page


def test_everything_is_embedded_and_nothing_is_fetched(page: str) -> None:
    sources = re.findall(r'src="([^"]*)"', page)
    assert sources and all(source.startswith("data:") for source in sources)
    assert 'href="http' not in page and "<link" not in page
    png = re.search(r'src="data:image/png;base64,([^"]+)"', page).group(1)
    assert base64.b64decode(png).startswith(PNG_SIGNATURE)
    assert 'src="data:image/gif;base64,' in page
    assert "<video controls" in page and 'src="data:video/mp4;base64,' in page


def test_one_curve_per_namespace_and_a_headline_return(page: str) -> None:
    namespaces = re.findall(r'data-namespace="([^"]+)"', page)
    # eval/ still has a figure for eval/length once eval/return has its own; the usual
    # namespaces come in a fixed order, whatever order the log first wrote them in.
    assert namespaces == ["eval", "train", "loss"]
    assert page.count('data-metric="eval/return"') == 1
    assert page.index('data-metric="eval/return"') < page.index("data-namespace=")


def test_last_values_table_skips_the_truncated_line(page: str) -> None:
    table = re.search(r'<table class="metrics">.*?</table>', page, re.S).group(0)
    row = re.search(r"<td>train/episode_return</td>(.*?)</tr>", table).group(1)
    # Last complete value 5 at step 5000, not the 99 of the half-written line.
    assert re.findall(r"<td[^>]*>(.*?)</td>", row)[:2] == ["5", "5000"]


def test_bench_figure_is_not_repeated_and_paths_outside_the_run_are_refused(page: str) -> None:
    assert page.count("<figcaption>maze steps</figcaption>") == 1
    assert "<figcaption>value map</figcaption>" in page
    assert "<figcaption>outside</figcaption>" not in page
    assert "outside the run directory" in page


def test_output_can_go_elsewhere(full_run: Path, tmp_path: Path) -> None:
    target = tmp_path / "reports" / "mine.html"
    assert build_report(full_run, output=target) == target
    assert target.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_read_metrics_tolerates_a_crash_but_reports_corrupt_middle_lines(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    lines = ['{"step": 1, "a/x": 1}', "not json", "", '{"step": 2, "a/x": 2, "a/tag": "s"}']
    path.write_text("\n".join(lines) + '\n{"step": 3, "a/')
    metrics = read_metrics(path)
    assert metrics.series["a/x"].values == [1.0, 2.0]
    assert "a/tag" not in metrics.series
    assert metrics.unreadable_lines == [2]
    assert metrics.records == 2


@pytest.mark.parametrize("make", ["missing", "file", "empty"])
def test_bad_run_directory_raises(tmp_path: Path, make: str) -> None:
    run_dir = tmp_path / "run"
    if make == "file":
        run_dir.write_text("")
    elif make == "empty":
        run_dir.mkdir()
    with pytest.raises(RunDirectoryError, match=str(run_dir.name)):
        build_report(run_dir)
    assert not (tmp_path / "run" / "report.html").exists()


def test_registered_sections_follow_the_built_in_ones(tmp_path: Path, clean_sections: None) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"algorithm": "dreamer"}))
    register_section("World model <rollouts>", lambda run_dir: f"<p>imagined in {run_dir.name}</p>")
    register_section("Nothing here", lambda run_dir: None)
    register_section("Broken", lambda run_dir: 1 / 0)
    with pytest.warns(RuntimeWarning, match="Broken"):
        page = build_report(tmp_path).read_text(encoding="utf-8")
    assert f"<p>imagined in {tmp_path.name}</p>" in page
    assert "<h2>World model &lt;rollouts&gt;</h2>" in page
    assert page.index("<h2>Settings</h2>") < page.index("<h2>World model")
    assert "<h2>Nothing here</h2>" not in page
    assert "ZeroDivisionError" in page


def test_a_registered_section_alone_is_something_to_report(tmp_path: Path, clean_sections: None) -> None:
    register_section("Custom", lambda run_dir: "<p>custom</p>")
    assert "<p>custom</p>" in build_report(tmp_path).read_text(encoding="utf-8")


def test_importing_the_report_does_not_import_matplotlib() -> None:
    code = "import sys, wmlab.report; print('matplotlib' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
