"""The self-contained HTML report of a run: `wmlab report RUN_DIR`.

The report is one file that fetches nothing: images and videos are embedded as base64 data URIs
and the styling sits in the page, so it can be mailed, attached to an issue or opened offline.
Every piece of text taken from the run directory is escaped, because a run directory is data, not
markup.

What a run directory may hold (each part is optional):

- `config.json`       the run's settings, shown as a table with nested keys joined by dots;
- `summary.json`      headline numbers, shown at the top;
- `metrics.jsonl`     one JSON object per line, {"step": ..., "time": ..., "<namespace>/<name>": x},
                      drawn as one learning-curve figure per namespace, one axes per metric
                      ("eval/return" and "eval/success" get their own, larger figure first), and
                      summarised in a table of last values;
- `bench/*.json`      benchmark results: "tables", "figures" (paths relative to the run directory)
                      and "settings";
- `figures/*.png`     any figure not already shown;
- `videos/*.gif|mp4`  rollouts, embedded as images or playable videos.

Model families add their own sections with `register_section`; they follow the built-in ones in
the order they were registered.

Matplotlib is imported only while drawing, so importing this module stays cheap.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from wmlab.core.errors import RunDirectoryError

__all__ = [
    "build_report",
    "register_section",
    "unregister_section",
    "registered_sections",
    "read_metrics",
    "flatten",
    "Metrics",
    "Series",
]

SectionFunction = Callable[[Path], "str | None"]

REPORT_FILE = "report.html"
HEADLINE_METRIC = "eval/return"
# Drawn together at the top where logged (each on its own axes).
HEADLINE_METRICS = (HEADLINE_METRIC, "eval/success")

# A data URI is a third larger than its file, and browsers grow slow on pages of hundreds of
# megabytes; a file above this size is named in the page instead of embedded.
MAX_EMBEDDED_BYTES = 32 * 1024 * 1024

IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".svg": "image/svg+xml",
}
VIDEO_TYPES = {".mp4": "video/mp4", ".webm": "video/webm"}


# ----------------------------------------------------------------------------------------------
# Extension point


# A dict keeps insertion order, so sections appear in the order they were registered; registering
# a name again replaces its function in place, which makes re-importing a plugin harmless.
_extra_sections: dict[str, SectionFunction] = {}


def register_section(name: str, function: SectionFunction) -> None:
    """Add a section to every report built from now on.

    `function(run_dir)` returns an HTML fragment, or None when the run has nothing for it (a
    Dreamer section in a Dyna run, say). The fragment is trusted markup: escape any text it takes
    from files with `html.escape`. `name` becomes the section's heading and is escaped here.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError("a report section needs a non-empty name, used as its heading")
    if not callable(function):
        raise TypeError(f"section {name!r} needs a function run_dir -> str | None, got {function!r}")
    _extra_sections[name] = function


def unregister_section(name: str) -> None:
    """Remove a section added with `register_section`; removing an absent one does nothing."""
    _extra_sections.pop(name, None)


def registered_sections() -> list[str]:
    """The names of the extra sections, in the order they will appear."""
    return list(_extra_sections)


# ----------------------------------------------------------------------------------------------
# Reading a run directory


@dataclass
class Series:
    """One metric: its values and the environment steps at which they were logged."""

    steps: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)


@dataclass
class Metrics:
    """What `metrics.jsonl` holds, one series per metric in the order metrics first appear."""

    series: dict[str, Series]
    records: int
    last_step: float | None
    last_time: float | None
    unreadable_lines: list[int]  # 1-based numbers of corrupt lines other than a truncated last one

    def namespaces(self) -> dict[str, dict[str, Series]]:
        """Series grouped by the part of their name before the first "/": the usual namespaces
        first, in the order a reader asks about a run (how well, how it learned, what it cost),
        then any others alphabetically."""
        groups: dict[str, dict[str, Series]] = {}
        for name, series in self.series.items():
            groups.setdefault(namespace_of(name), {})[name] = series
        return dict(sorted(groups.items(), key=lambda item: _namespace_rank(item[0])))


NAMESPACE_ORDER = ("eval", "train", "loss", "plan")


def _namespace_rank(namespace: str) -> tuple[int, str]:
    if namespace in NAMESPACE_ORDER:
        return NAMESPACE_ORDER.index(namespace), namespace
    return len(NAMESPACE_ORDER), namespace


def namespace_of(metric: str) -> str:
    return metric.partition("/")[0] if "/" in metric else "other"


def read_metrics(path: Path) -> Metrics:
    """Read a metrics log, skipping a last line that a crash left half-written.

    Values that are not numbers (a string tag, a list) have no place on a curve and are left out;
    so are records without a numeric "step", which cannot be placed on the x axis.
    """
    # errors="replace": a crash can cut a multi-byte character in half, and that must not stop
    # the report from being read.
    lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    last_written = max((number for number, line in enumerate(lines) if line.strip()), default=-1)

    series: dict[str, Series] = {}
    records = 0
    last_step = last_time = None
    unreadable: list[int] = []
    for number, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number != last_written:
                unreadable.append(number + 1)
            continue
        if not isinstance(record, dict):
            unreadable.append(number + 1)
            continue
        records += 1
        if _is_number(record.get("time")):
            last_time = float(record["time"])
        step = record.get("step")
        if not _is_number(step):
            continue
        last_step = float(step)
        for name, value in record.items():
            if name in ("step", "time") or not _is_number(value):
                continue
            metric = series.setdefault(name, Series())
            metric.steps.append(float(step))
            metric.values.append(float(value))
    return Metrics(series, records, last_step, last_time, unreadable)


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optimizer": {"lr": 1e-3}} -> {"optimizer.lr": 1e-3}; empty dicts stay as values."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat


def _is_number(value: Any) -> bool:
    # bool is an int subclass, but a flag is not a quantity to plot.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class _Context:
    """What the built-in sections share while one report is built."""

    run_dir: Path
    notes: list[str] = field(default_factory=list)  # escaped HTML, shown near the top
    shown_files: set[Path] = field(default_factory=set)  # so figures/ does not repeat bench figures

    def read_json(self, relative: str | Path) -> Any:
        """The parsed file, or None (with a note for the reader) when it is absent or corrupt."""
        path = self.run_dir / relative
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            self.note(f"{relative} could not be read and is left out: {error}")
            return None

    def note(self, text: str) -> None:
        self.notes.append(_escape(text))

    def display(self, path: Path) -> str:
        """The path as the reader knows it: relative to the run directory when it lies inside."""
        for base in (self.run_dir, self.run_dir.resolve()):
            try:
                return path.relative_to(base).as_posix()
            except ValueError:
                pass
        return path.name

    def inside_run(self, relative: str) -> Path | None:
        """The file a run-relative path names, or None if it points outside the run directory.

        A report is made to be shared, so a bench file must not be able to pull in, say,
        ../../home/user/private.png.
        """
        root = self.run_dir.resolve()
        candidate = (root / relative).resolve()
        if candidate != root and root not in candidate.parents:
            return None
        return candidate


# ----------------------------------------------------------------------------------------------
# Small HTML helpers


def _escape(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _format(value: Any) -> str:
    """A value as a reader wants to see it in a table (not yet escaped)."""
    if value is None:
        return "—"
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str)


def _table(columns: Iterable[Any], rows: Iterable[Iterable[Any]], css_class: str = "") -> str:
    columns = list(columns)
    head = "".join(f"<th>{_escape(column)}</th>" for column in columns)
    body = []
    for row in rows:
        cells = list(row)
        # A ragged row is shown as it is, padded, rather than dropped.
        cells += [None] * (len(columns) - len(cells))
        body.append(
            "<tr>"
            + "".join(
                f'<td class="number">{_escape(_format(cell))}</td>'
                if _is_number(cell)
                else f"<td>{_escape(_format(cell))}</td>"
                for cell in cells
            )
            + "</tr>"
        )
    class_attribute = f' class="{css_class}"' if css_class else ""
    return f"<table{class_attribute}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _settings_table(settings: Mapping[str, Any]) -> str:
    return _table(["setting", "value"], flatten(settings).items(), "settings")


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _figure(data: bytes, mime: str, caption: str, attributes: str = "") -> str:
    return (
        f'<figure{attributes}><img src="{_data_uri(data, mime)}" alt="{_escape(caption)}">'
        f"<figcaption>{_escape(caption)}</figcaption></figure>"
    )


def _caption(path: Path) -> str:
    """return_vs_steps.png -> "return vs steps"."""
    return re.sub(r"[_\-]+", " ", path.stem).strip() or path.name


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"


def _whole(number: float) -> float | int:
    """Steps are read as floats; 20000.0 reads better as 20000."""
    return int(number) if math.isfinite(number) and number.is_integer() else number


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {seconds:02d} s"
    return f"{seconds} s"


def _embeddable(context: _Context, path: Path) -> bytes | None:
    """The file's bytes, or None with a note when it is too large to embed."""
    size = path.stat().st_size
    if size > MAX_EMBEDDED_BYTES:
        context.note(
            f"{context.display(path)} is {size / 2**20:.0f} MiB, more than the "
            f"{MAX_EMBEDDED_BYTES / 2**20:.0f} MiB a self-contained page embeds; open it beside "
            "the report."
        )
        return None
    return path.read_bytes()


# ----------------------------------------------------------------------------------------------
# Learning curves


def _plot(series: Mapping[str, Series], title: str, size: tuple[float, float]) -> bytes:
    """One axes, one line per metric against environment steps, as PNG bytes."""
    # Imported here: matplotlib costs a noticeable fraction of a second, and most importers of
    # wmlab never draw. A bare Figure on the Agg canvas needs no pyplot state and no display.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import EngFormatter

    figure = Figure(figsize=size, dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for name, metric in series.items():
        # Sparse series (evaluations every few thousand steps) read better with their points
        # marked; a single point would otherwise not show at all.
        marker = "o" if len(metric.values) <= 40 else None
        # In a legend under the title "loss/", "model" says as much as "loss/model".
        label = name.removeprefix(title) if len(series) > 1 else name
        axes.plot(metric.steps, metric.values, label=label, marker=marker, markersize=3, linewidth=1.4)
    axes.set_title(title)
    axes.set_xlabel("environment steps")
    axes.xaxis.set_major_formatter(EngFormatter(sep=""))  # 1.5M rather than 1500000 or 1e6 offsets
    axes.grid(alpha=0.3)
    if _spans_decades([value for metric in series.values() for value in metric.values]):
        axes.set_yscale("log")
    if len(series) == 1:
        axes.set_ylabel(next(iter(series)))
    else:
        axes.legend(fontsize="small", loc="best")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _plot_panels(
    series: Mapping[str, Series], title: str, columns: int = 3, panel: tuple[float, float] = (3.4, 2.4)
) -> bytes:
    """Small multiples: one axes per metric against environment steps, as PNG bytes. The terms of
    one namespace differ in scale (an image loss in the thousands beside a KL near one), so each
    gets its own y axis rather than one squashing the others."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import EngFormatter

    count = len(series)
    columns = max(1, min(columns, count))
    rows = math.ceil(count / columns)
    figure = Figure(figsize=(panel[0] * columns, panel[1] * rows + 0.4), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes_grid = figure.subplots(rows, columns, squeeze=False)
    for index, (name, metric) in enumerate(series.items()):
        axes = axes_grid[index // columns][index % columns]
        marker = "o" if len(metric.values) <= 40 else None
        axes.plot(metric.steps, metric.values, marker=marker, markersize=3, linewidth=1.3, color=f"C{index % 10}")
        axes.set_title(name, fontsize=9)
        axes.xaxis.set_major_formatter(EngFormatter(sep=""))
        axes.tick_params(labelsize=7)
        axes.grid(alpha=0.3)
        if _spans_decades(metric.values):
            axes.set_yscale("log")
    for index in range(count, rows * columns):
        axes_grid[index // columns][index % columns].set_visible(False)
    figure.suptitle(f"{title} (x: environment steps)", fontsize=10)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _spans_decades(values: list[float], decades: float = 3.0) -> bool:
    """Whether positive values range so widely (losses falling from 1e3 to 1e-1, say, or terms
    of different scale sharing an axes) that a linear axis would flatten all but the largest."""
    finite = [value for value in values if math.isfinite(value)]
    if not finite or min(finite) <= 0:
        return False
    return math.log10(max(finite) / min(finite)) >= decades


# ----------------------------------------------------------------------------------------------
# Built-in sections. Each returns an HTML fragment, or "" when the run has nothing for it.


def _summary_section(context: _Context) -> str:
    summary = context.read_json("summary.json")
    if summary is None:
        return ""
    if not isinstance(summary, dict):
        context.note("summary.json should hold one JSON object of headline numbers; left out.")
        return ""
    cards = "".join(
        f'<div class="card"><div class="value">{_escape(_format(value))}</div>'
        f'<div class="label">{_escape(name)}</div></div>'
        for name, value in flatten(summary).items()
    )
    return f'<div class="cards">{cards}</div>'


def _curves_sections(context: _Context) -> tuple[str, str, str]:
    """The headline return figure, the figure of each namespace, and the last-value table."""
    path = context.run_dir / "metrics.jsonl"
    if not path.is_file():
        return "", "", ""
    metrics = read_metrics(path)
    if metrics.unreadable_lines:
        shown = ", ".join(str(number) for number in metrics.unreadable_lines[:10])
        more = " and others" if len(metrics.unreadable_lines) > 10 else ""
        context.note(f"metrics.jsonl: {len(metrics.unreadable_lines)} corrupt line(s) skipped (line {shown}{more}).")
    if not metrics.series:
        context.note(
            f"metrics.jsonl holds {metrics.records} complete record(s) but no metric logged at a "
            "step, so there are no learning curves."
        )
        return "", "", ""

    headline = ""
    shown = [name for name in HEADLINE_METRICS if name in metrics.series]
    if HEADLINE_METRIC in metrics.series:
        if len(shown) == 1:
            image = _plot({HEADLINE_METRIC: metrics.series[HEADLINE_METRIC]}, "evaluation return", (9, 4.2))
        else:  # return and success rate: two scales, two axes
            image = _plot_panels(
                {name: metrics.series[name] for name in shown},
                "evaluation of the greedy agent",
                columns=2,
                panel=(4.6, 3.2),
            )
        points = len(metrics.series[HEADLINE_METRIC].values)
        attributes = f' class="headline" data-metric="{HEADLINE_METRIC}"'
        headline = _figure(image, "image/png", f"{', '.join(shown)} ({points} evaluations)", attributes)

    figures = []
    for namespace, group in metrics.namespaces().items():
        # The headline figure already shows the return; drawing it again beside evaluation
        # metrics of another scale would only squash them.
        group = {name: series for name, series in group.items() if name not in shown}
        if not group:
            continue
        image = _plot_panels(group, f"{namespace}/")
        attributes = f' class="curve" data-namespace="{_escape(namespace)}"'
        figures.append(_figure(image, "image/png", f"{namespace}/", attributes))
    progress = f"{metrics.records} record(s)"
    if metrics.last_step is not None:
        progress += f", up to step {_format(_whole(metrics.last_step))}"
    if metrics.last_time is not None:
        progress += f", {_duration(metrics.last_time)} of wall time"
    curves = f'<p class="muted">{_escape(progress)}.</p><div class="grid">{"".join(figures)}</div>'

    rows = []
    in_namespace_order = [item for group in metrics.namespaces().values() for item in group.items()]
    for name, series in in_namespace_order:
        finite = [value for value in series.values if math.isfinite(value)] or [math.nan]
        last_value, last_step = series.values[-1], _whole(series.steps[-1])
        rows.append([name, last_value, last_step, min(finite), max(finite), len(series.values)])
    table = _table(["metric", "last", "at step", "min", "max", "points"], rows, "metrics")
    return headline, curves, table


def _bench_section(context: _Context) -> str:
    directory = context.run_dir / "bench"
    if not directory.is_dir():
        return ""
    parts = []
    for path in sorted(directory.glob("*.json")):
        result = context.read_json(path.relative_to(context.run_dir))
        if result is None:
            continue
        if not isinstance(result, dict):
            context.note(f"bench/{path.name} should hold one JSON object; it is left out.")
            continue
        parts.append(f"<h3>{_escape(result.get('title') or path.stem)}</h3>")
        parts.extend(_bench_tables(context, path.name, result.get("tables") or []))
        figures = _bench_figures(context, path.name, result.get("figures") or [])
        if figures:
            parts.append(f'<div class="grid">{figures}</div>')
        settings = result.get("settings")
        if isinstance(settings, dict) and settings:
            table = _settings_table(settings)
            parts.append(f"<details><summary>settings</summary>{table}</details>")
    return "".join(parts)


def _bench_tables(context: _Context, source: str, tables: Any) -> list[str]:
    parts = []
    for table in tables if isinstance(tables, list) else [tables]:
        if (
            not isinstance(table, dict)
            or not isinstance(table.get("columns"), list)
            or not isinstance(table.get("rows"), list)
        ):
            context.note(f"bench/{source}: a table without a list of columns and rows is left out.")
            continue
        if table.get("title"):
            parts.append(f"<h4>{_escape(table['title'])}</h4>")
        rows = [row if isinstance(row, list) else [row] for row in table["rows"]]
        parts.append(_table(table["columns"], rows, "bench"))
    return parts


def _bench_figures(context: _Context, source: str, figures: Any) -> str:
    parts = []
    for relative in figures if isinstance(figures, list) else [figures]:
        path = context.inside_run(str(relative))
        if path is None:
            context.note(f"bench/{source}: figure {relative} is outside the run directory.")
            continue
        if not path.is_file():
            context.note(f"bench/{source}: figure {relative} does not exist.")
            continue
        mime = IMAGE_TYPES.get(path.suffix.lower())
        if mime is None:
            context.note(f"bench/{source}: figure {relative} is not an image this page can show.")
            continue
        context.shown_files.add(path)
        parts.append(_image_figure(context, path, mime))
    return "".join(parts)


def _image_figure(context: _Context, path: Path, mime: str) -> str:
    """The image at `path` as a captioned figure; "" when it is too large to embed (noted)."""
    data = _embeddable(context, path)
    return "" if data is None else _figure(data, mime, _caption(path))


def _run_files(context: _Context, folder: str) -> list[Path]:
    """The entries of RUN_DIR/folder in name order ([] when there is no such folder)."""
    directory = context.run_dir / folder
    return sorted(directory.iterdir()) if directory.is_dir() else []


def _grid(parts: list[str]) -> str:
    return f'<div class="grid">{"".join(parts)}</div>' if parts else ""


def _figures_section(context: _Context) -> str:
    parts = []
    for path in _run_files(context, "figures"):
        mime = IMAGE_TYPES.get(path.suffix.lower())
        if mime is not None and path.is_file() and path.resolve() not in context.shown_files:
            parts.append(_image_figure(context, path, mime))
    return _grid([part for part in parts if part])


def _videos_section(context: _Context) -> str:
    parts = []
    for path in _run_files(context, "videos"):
        suffix = path.suffix.lower()
        if not path.is_file() or (suffix != ".gif" and suffix not in VIDEO_TYPES):
            continue
        data = _embeddable(context, path)
        if data is None:
            continue
        if suffix == ".gif":
            parts.append(_figure(data, "image/gif", _video_caption(context, path), ' class="video"'))
        else:
            mime = VIDEO_TYPES[suffix]
            parts.append(
                f'<figure class="video"><video controls loop muted preload="metadata">'
                f'<source src="{_data_uri(data, mime)}" type="{mime}">'
                f"</video><figcaption>{_escape(_caption(path))}</figcaption></figure>"
            )
    return _grid(parts)


def _video_caption(context: _Context, path: Path) -> str:
    """The open-loop dream videos say how to read them; other videos are named by their file."""
    if not path.name.startswith("open_loop_"):
        return _caption(path)
    errors = context.read_json("figures/open_loop_error.json")
    start = errors.get("context") if isinstance(errors, dict) else None
    start = f"step {start}" if isinstance(start, int) else "the end of the context"
    return (
        f"open-loop dream ({path.stem.removeprefix('open_loop_')}): each row a real episode; "
        f"columns real | imagined | error (grey = exact). The model sees the real frames up to "
        f"{start}, then imagines from the real actions alone (blue line: context, orange: imagined)."
    )


def _play_line(run_dir: Path) -> str:
    """How to play inside the run's world model, for runs with a checkpoint."""
    if not (run_dir / "checkpoints").is_dir():
        return ""
    return f'<p class="play">Play inside this world model with the keyboard: <code>wmlab play {_escape(run_dir)}</code></p>'


def _extra_section(run_dir: Path, name: str, function: SectionFunction) -> str:
    """A registered section's fragment; a failing one is reported in its place, because one
    broken plugin should not cost the reader the rest of the report."""
    try:
        fragment = function(run_dir)
    except Exception as error:  # noqa: BLE001 - any plugin failure is shown, not raised
        warnings.warn(f"report section {name!r} failed: {error!r}", RuntimeWarning, stacklevel=3)
        failure = f"{type(error).__name__}: {error}"
        return f'<p class="error">This section failed: {_escape(failure)}</p>'
    if fragment is not None and not isinstance(fragment, str):
        raise TypeError(f"report section {name!r} returned {type(fragment).__name__}, not str or None")
    return fragment or ""


# ----------------------------------------------------------------------------------------------
# The page


def build_report(run_dir: str | os.PathLike[str], output: str | os.PathLike[str] | None = None) -> Path:
    """Write the run's report, by default to `run_dir/report.html`, and return its path.

    Raises RunDirectoryError when `run_dir` is not a directory or holds nothing to report.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        what = "is a file, not a directory" if run_dir.exists() else "does not exist"
        raise RunDirectoryError(
            f"cannot report on {run_dir}: it {what}. Pass the directory a run wrote, the one "
            "holding config.json and metrics.jsonl."
        )
    context = _Context(run_dir)
    config = context.read_json("config.json")
    if config is not None and not isinstance(config, dict):
        context.note("config.json should hold one JSON object of settings; it is left out.")
        config = None

    headline, curves, last_values = _curves_sections(context)
    sections: list[tuple[str, str]] = [
        ("Summary", _summary_section(context)),
        ("Evaluation return", headline),
        ("Learning curves", curves),
        ("Last values", last_values),
        ("Benchmarks", _bench_section(context)),
        ("Figures", _figures_section(context)),
        ("Videos", _videos_section(context)),
        ("Settings", _settings_table(config) if config else ""),
    ]
    sections += [(name, _extra_section(run_dir, name, function)) for name, function in _extra_sections.items()]
    sections = [(title, body) for title, body in sections if body]
    if not sections:
        raise RunDirectoryError(
            f"{run_dir} has nothing to report: it holds none of config.json, summary.json, "
            "metrics.jsonl, bench/*.json, figures/ or videos/. Pass the directory a run wrote."
        )

    page = _page(run_dir, config or {}, context.notes, sections)
    output = Path(output) if output is not None else run_dir / REPORT_FILE
    output.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed over it, so a browser that reloads mid-write (or a
    # crash) never sees half a page.
    # (Not tempfile.mkstemp: its owner-only permissions would follow the rename, and a report is
    # meant to be read by others.)
    temporary = output.with_name(f".{output.name}.{os.getpid()}.partial")
    try:
        temporary.write_text(page, encoding="utf-8")
        os.replace(temporary, output)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return output


def _setting_name(config: Mapping[str, Any], key: str) -> str | None:
    """config["algorithm"] as a name, whether stored as "dyna-q" or {"name": "dyna-q", ...}."""
    value = config.get(key)
    if isinstance(value, Mapping):
        value = value.get("name")
    return str(value) if value not in (None, "") else None


def _page(run_dir: Path, config: Mapping[str, Any], notes: list[str], sections: list[tuple[str, str]]) -> str:
    run_name = run_dir.resolve().name
    algorithm, environment = _setting_name(config, "algorithm"), _setting_name(config, "env")
    subtitle = " on ".join(part for part in (algorithm, environment) if part)
    title = f"{run_name} — {subtitle}" if subtitle else run_name
    generated = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")

    anchors: set[str] = set()
    navigation, bodies = [], []
    for heading, body in sections:
        anchor = _slug(heading)
        while anchor in anchors:  # two plugins may pick the same heading
            anchor += "-more"
        anchors.add(anchor)
        navigation.append(f'<a href="#{anchor}">{_escape(heading)}</a>')
        bodies.append(f'<section id="{anchor}"><h2>{_escape(heading)}</h2>{body}</section>')
    notes_html = (
        '<div class="notes"><strong>Notes</strong><ul>' + "".join(f"<li>{note}</li>" for note in notes) + "</ul></div>"
        if notes
        else ""
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="wmlab report">
<title>{_escape(title)}</title>
<style>{_STYLE}</style>
</head>
<body>
<header>
<h1>{_escape(run_name)}</h1>
{f'<p class="subtitle">{_escape(subtitle)}</p>' if subtitle else ""}
<p class="muted">Generated {_escape(generated)} by wmlab report.</p>
{_play_line(run_dir)}
<nav>{" · ".join(navigation)}</nav>
</header>
{notes_html}
{"".join(bodies)}
</body>
</html>
"""


_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d232a;
       max-width: 1180px; margin: 0 auto; padding: 1.5rem 2rem 4rem; line-height: 1.45; }
h1 { margin: 0 0 .2rem; font-size: 1.8rem; }
h2 { margin-top: 2.4rem; padding-bottom: .3rem; border-bottom: 1px solid #d8dee4;
     font-size: 1.3rem; }
h3 { margin: 1.6rem 0 .6rem; font-size: 1.1rem; }
h4 { margin: 1.2rem 0 .4rem; font-size: 1rem; color: #424a53; }
.subtitle { margin: 0; font-size: 1.1rem; color: #424a53; }
.muted { color: #656d76; font-size: .9rem; }
nav { margin-top: .6rem; font-size: .9rem; }
nav a, a { color: #0969da; text-decoration: none; }
.notes { margin-top: 1.2rem; padding: .6rem 1rem; background: #fff8c5; border: 1px solid #d4a72c;
         border-radius: 6px; font-size: .9rem; }
.notes ul { margin: .3rem 0 0; padding-left: 1.2rem; }
.error { padding: .6rem 1rem; background: #ffebe9; border: 1px solid #cf222e; border-radius: 6px; }
.cards { display: flex; flex-wrap: wrap; gap: .8rem; }
.card { padding: .7rem 1rem; min-width: 8rem; border: 1px solid #d8dee4; border-radius: 8px;
        background: #f6f8fa; }
.card .value { font-size: 1.4rem; font-weight: 600; font-variant-numeric: tabular-nums; }
.card .label { font-size: .85rem; color: #656d76; }
table { border-collapse: collapse; margin: .4rem 0 1rem; font-size: .9rem; }
th, td { padding: .3rem .7rem; border-bottom: 1px solid #d8dee4; text-align: left;
         vertical-align: top; }
th { background: #f6f8fa; font-weight: 600; }
tbody tr:nth-child(even) td { background: #fafbfc; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
table.settings td:first-child { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; }
td { word-break: break-word; }
.grid { display: flex; flex-wrap: wrap; gap: 1rem; }
figure { margin: .4rem 0; }
figure img, figure video { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
figure.curve { flex: 1 1 520px; max-width: 100%; }
figure.curve img { width: 100%; }
figure.headline img { width: 100%; max-width: 1000px; }
figure.video img, figure.video video { image-rendering: pixelated; min-width: 160px; }
figcaption { font-size: .85rem; color: #656d76; text-align: center; }
figure.video figcaption { max-width: 420px; text-align: left; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; background: #f6f8fa; padding: 0 .3rem; }
details summary { cursor: pointer; color: #424a53; margin: .4rem 0; }
"""
