"""What every `wmlab study NAME` shares: its arguments, the training of the compared Dreamer
variants on the same seeds, reuse of finished runs, statistics over seeds and the output files.

A study's output directory:

    OUT/runs/VARIANT/seedS/   one ordinary run directory per variant and seed (wmlab report works)
    OUT/NAME.json             every measured number, the settings, the machine and the command
    OUT/NAME.png              the figure
    OUT/NAME.md               a markdown section: the command, a table, the measured comparison
                              in one sentence computed from the numbers, and the figure

Rerunning the command with the same OUT reuses what is done: a run whose summary.json shows it
reached its steps (or its time limit) is skipped, an interrupted run resumes from its last
checkpoint, a run asked for more steps continues, and measurements after training are cached
in RUN_DIR/study_eval.json. A run directory whose settings differ from the command's (other
agent overrides, say) is an error unless --force replaces it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import tyro

from wmlab.agents.dreamer.config import DreamerConfig
from wmlab.bench.common import machine_description
from wmlab.core.config import from_dict, parse_json_object
from wmlab.core.errors import RunDirectoryError, WmlabError
from wmlab.core.registry import ALGORITHMS
from wmlab.models.rssm import SIZES
from wmlab.runs.config import TrainConfig
from wmlab.runs.directory import CONFIG_FILE, RESUMABLE_CHANGES, RunSpec
from wmlab.train.loop import Trainer

#: Defaults of a full study and of its --quick smoke version (TrainConfig fields).
FULL_TRAIN = {
    "steps": 100_000,
    "eval_every": 5_000,
    "eval_episodes": 5,
    "checkpoint_every": 5_000,
    "tensorboard": False,
}
QUICK_TRAIN = {
    "steps": 200,
    "learning_starts": 100,
    "batch_size": 4,
    "sequence_length": 8,
    "train_ratio": 32.0,
    "eval_every": 100,
    "eval_episodes": 1,
    "log_every": 50,
    "checkpoint_every": 200,
    "tensorboard": False,
}
FULL_SEEDS, QUICK_SEEDS = 3, 1
#: Agent settings of every study run (the user's --agent-overrides come after them).
STUDY_AGENT = {"open_loop_report": False}
#: Seed of the first episode of every measurement after training; the same for every variant.
MEASUREMENT_SEED = 20_000_000
STUDY_EVAL_FILE = "study_eval.json"


@dataclass(frozen=True)
class StudyArguments:
    """Arguments of every study."""

    out: Path
    """Output directory: runs/, NAME.json, NAME.png, NAME.md. Rerunning with the same directory
    reuses finished runs and resumes interrupted ones."""
    steps: int | None = None
    """Environment steps per run (default 100000; --quick: 200)."""
    time_limit: float = 0.0
    """Seconds of training per run, summed over resumed sessions (0: no limit); a run stopped by it
    counts as finished."""
    seeds: int | None = None
    """Runs per variant, with seeds 0 .. seeds-1, the same for every variant (default 3; --quick: 1)."""
    algo: str = "dreamer"
    """Registered Dreamer algorithm whose config is the base of every variant (dreamer,
    dreamer-v1, dreamer-v2, dreamer-cpu, ...)."""
    env: str = "dmc:cartpole-swingup"
    """Environment id (wmlab list): the task every variant trains on."""
    env_kwargs: str = '{"action_repeat": 2}'
    """Environment options as JSON."""
    agent_overrides: str = "{}"
    """Agent config fields as JSON, applied to the base config of every variant, e.g.
    '{"imagination_horizon": 10, "model": {"size": "size12m"}}'; each variant's own field (the one
    the study compares) is applied after them."""
    train_overrides: str = "{}"
    """TrainConfig fields as JSON, e.g. '{"train_ratio": 128, "sequence_length": 32}'; the flags
    --steps, --time-limit, --eval-every, --eval-episodes, --device, --threads win over them."""
    eval_every: int | None = None
    """Evaluate every this many environment steps during training (default 5000; --quick: 100)."""
    eval_episodes: int | None = None
    """Episodes per evaluation during training (default 5; --quick: 1)."""
    device: str = "cpu"
    """Torch device of every run."""
    threads: int = 0
    """Torch CPU threads (0: torch's default)."""
    quick: bool = False
    """A smoke version for tests: the tiny model, 200 steps, 1 seed, 1 episode per measurement;
    its numbers mean nothing."""
    force: bool = False
    """Replace run directories under OUT whose settings differ from this command's."""
    progress: bool = True
    """Show each run's progress bar."""
    runs_dir: Path | None = None
    """Directory of the run directories (default OUT/runs). Studies given the same --runs-dir share
    their identical runs: plain Dreamer on the same task, settings and seeds is trained once. A run
    that another study is training meanwhile is left for last and then waited for."""


@dataclass(frozen=True)
class Variant:
    """One compared configuration: a directory name, a legend label, the agent config fields it
    changes, and optionally its own training environment."""

    name: str
    label: str
    agent_changes: dict = field(default_factory=dict)
    env: str | None = None
    env_kwargs: dict | None = None


@dataclass
class RunResult:
    """One trained run: its variant, seed, directory and Trainer summary."""

    variant: Variant
    seed: int
    run_dir: Path
    summary: dict


def deep_merge(base: dict, changes: dict) -> dict:
    """`base` with `changes` written over it; nested dicts are merged key by key."""
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def quick_agent_changes(config: Any) -> dict:
    """The tiny model of the test suite for a Dreamer preset: its latent type, heads and losses
    kept, small widths, a short imagination horizon, no random prefill."""
    gaussian = config.model.latent == "gaussian"
    model = {"size": asdict(SIZES.preset("tiny", classes=0) if gaussian else SIZES["tiny"]), "stochastic_size": 4}
    return {"model": model, "imagination_horizon": 4, "random_steps": 0}


class Study:
    """The variants, seeds and settings of one study run from the command line."""

    def __init__(self, name: str, arguments: StudyArguments, argv: Sequence[str] = ()):
        self.name, self.arguments = name, arguments
        self.command = " ".join(["wmlab", "study", name, *(shlex.quote(str(part)) for part in argv)])
        self.out = Path(arguments.out)
        self.quick = arguments.quick
        self.env = arguments.env
        self.env_kwargs = parse_json_object("--env-kwargs", arguments.env_kwargs)
        self.agent_overrides = parse_json_object("--agent-overrides", arguments.agent_overrides)
        train_overrides = parse_json_object("--train-overrides", arguments.train_overrides)
        seeds = self.count(arguments.seeds, FULL_SEEDS, QUICK_SEEDS)
        if seeds < 1:
            raise WmlabError(f"--seeds must be at least 1, got {seeds}")
        self.seeds = list(range(seeds))

        self.config_class = ALGORITHMS.get(arguments.algo).load_config()
        if not (isinstance(self.config_class, type) and issubclass(self.config_class, DreamerConfig)):
            raise WmlabError(
                f"the studies compare Dreamer variants; --algo {arguments.algo!r} is not a Dreamer algorithm (dreamer, dreamer-v1, dreamer-v2, ...)"
            )
        self._from_dict = from_dict

        train = dict(QUICK_TRAIN if self.quick else FULL_TRAIN)
        train = deep_merge(train, train_overrides)
        explicit = {
            "steps": arguments.steps,
            "eval_every": arguments.eval_every,
            "eval_episodes": arguments.eval_episodes,
        }
        train.update({key: value for key, value in explicit.items() if value is not None})
        train.update(
            time_limit=float(arguments.time_limit),
            device=arguments.device,
            threads=arguments.threads,
            progress=arguments.progress,
        )
        try:
            self.train = from_dict(TrainConfig, train)
        except (ValueError, TypeError) as error:
            raise WmlabError(f"--train-overrides: {error}") from None
        # Fail on bad overrides before the first run starts.
        self.agent_config(Variant("check", "check"))

    def count(self, requested: int | None, full: int, quick: int = 1) -> int:
        """A count the command line may set (seeds, measurement episodes): as requested, else
        `full`, or `quick` with --quick."""
        return requested if requested is not None else (quick if self.quick else full)

    # --- configs -----------------------------------------------------------------------------

    def agent_config(self, variant: Variant) -> Any:
        """Base preset -> study settings -> (--quick: tiny model) -> --agent-overrides -> the
        variant's own fields."""
        base = self.config_class()
        data = deep_merge(asdict(base), STUDY_AGENT)
        if self.quick:
            data = deep_merge(data, quick_agent_changes(base))
        data = deep_merge(data, self.agent_overrides)
        data = deep_merge(data, variant.agent_changes)
        try:
            return self._from_dict(self.config_class, data)
        except (ValueError, TypeError) as error:
            raise WmlabError(f"--agent-overrides: {error}") from None

    def spec(self, variant: Variant, seed: int):
        env = variant.env or self.env
        env_kwargs = variant.env_kwargs if variant.env_kwargs is not None else self.env_kwargs
        return RunSpec(
            algorithm=self.arguments.algo,
            env=env,
            env_kwargs=dict(env_kwargs),
            train=dataclasses.replace(self.train, seed=seed),
            agent=self.agent_config(variant),
        )

    @property
    def runs_dir(self) -> Path:
        return Path(self.arguments.runs_dir) if self.arguments.runs_dir is not None else self.out / "runs"

    def run_dir(self, variant: Variant, seed: int) -> Path:
        return self.runs_dir / variant.name / f"seed{seed}"

    # --- training ----------------------------------------------------------------------------

    def train_all(self, variants: Sequence[Variant]) -> dict[str, list[RunResult]]:
        """Train (or reuse) every variant on every seed, seed by seed so that an interrupted study
        has comparable runs for the seeds it finished. A run locked by another process (another
        study sharing --runs-dir) is put off until the others are done, then waited for."""
        jobs = [(seed, variant) for seed in self.seeds for variant in variants]
        summaries: dict[tuple[int, str], dict] = {}
        pending, blocking = list(jobs), False
        while pending:
            deferred = []
            for seed, variant in pending:
                run_dir = self.run_dir(variant, seed)
                with RunLock(run_dir, wait=blocking) as lock:
                    if not lock.held:
                        print(
                            f"study {self.name}: {variant.label}, seed {seed} is being trained by another process; later",
                            flush=True,
                        )
                        deferred.append((seed, variant))
                        continue
                    print(
                        f"study {self.name}: {variant.label}, seed {seed} ({len(summaries) + 1}/{len(jobs)}) in {run_dir}",
                        flush=True,
                    )
                    summaries[seed, variant.name] = train_or_reuse(
                        self.spec(variant, seed), run_dir, force=self.arguments.force
                    )
            # Only runs that other processes hold are left: wait for each in turn.
            pending, blocking = deferred, True
        results: dict[str, list[RunResult]] = {variant.name: [] for variant in variants}
        for seed, variant in jobs:
            results[variant.name].append(
                RunResult(variant, seed, self.run_dir(variant, seed), summaries[seed, variant.name])
            )
        return results

    # --- outputs -----------------------------------------------------------------------------

    def settings(self) -> dict:
        return {
            "algo": self.arguments.algo,
            "env": self.env,
            "env_kwargs": self.env_kwargs,
            "seeds": self.seeds,
            "agent_overrides": self.agent_overrides,
            "train": asdict(self.train),
            "quick": self.quick,
        }

    def write(self, results: dict, markdown: str) -> dict[str, Path]:
        """OUT/NAME.json and OUT/NAME.md (the figure is drawn by the study into `figure_path`); prints
        the comparison sentence and where the files are."""
        self.out.mkdir(parents=True, exist_ok=True)
        payload = {
            "study": self.name,
            **results,
            "settings": self.settings(),
            "machine": machine_description(),
            "command": self.command,
        }
        json_path = self.out / f"{self.name}.json"
        json_path.write_text(json.dumps(payload, indent=2, default=_json_default))
        markdown_path = self.out / f"{self.name}.md"
        markdown_path.write_text(markdown)
        print(f"study {self.name}: results in {json_path}, {markdown_path} and {self.figure_path}")
        if results.get("comparison"):
            print(results["comparison"])
        return {"json": json_path, "markdown": markdown_path, "figure": self.figure_path}

    def document(
        self,
        title: str,
        intro: Sequence[str],
        table: Sequence[str],
        sentence: str,
        figure_caption: str,
        notes: Sequence[str] = (),
    ) -> str:
        """The study's markdown section: the header, the intro lines, the table (`markdown_table`),
        the comparison sentence with the notes in parentheses, and the figure."""
        notes_lines = [f"({note}.)" for note in notes]
        figure = f"![{figure_caption}]({self.figure_path.name})"
        return "\n".join([self.header(title), *intro, *table, "", sentence, *notes_lines, "", figure, ""])

    @property
    def figure_path(self) -> Path:
        return self.out / f"{self.name}.png"

    def header(self, title: str) -> str:
        """The markdown section's title, command and provenance."""
        machine = machine_description()
        seeds = f"seeds {self.seeds[0]}-{self.seeds[-1]}" if len(self.seeds) > 1 else f"seed {self.seeds[0]}"
        env = self.env + (f" {json.dumps(self.env_kwargs)}" if self.env_kwargs else "")
        lines = [
            f"### {title}",
            "",
            f"Command: `{self.command}`",
            "",
            f"{machine['date']}, {machine['cpu_count']} CPUs, torch {machine['torch']}, device {self.train.device}; "
            f"{self.arguments.algo} on {env}, {seeds}, {self.train.steps} steps per run"
            + (f" (time limit {self.train.time_limit:g} s)" if self.train.time_limit > 0 else "")
            + (" — **--quick smoke run: the numbers mean nothing**" if self.quick else "")
            + ".",
            "",
        ]
        return "\n".join(lines)


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


# ----------------------------------------------------------------------------------------------
# Reuse of run directories


class RunLock:
    """An exclusive lock on a run directory between processes (an advisory `flock` on
    RUN_DIR.lock beside it, released when the process ends however it ends). `held` says
    whether it was taken; with wait=False a lock held elsewhere is not waited for."""

    def __init__(self, run_dir: Path, wait: bool = True):
        self.path = Path(run_dir).with_name(Path(run_dir).name + ".lock")
        self.wait, self.held, self.handle = wait, False, None

    def __enter__(self) -> "RunLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "a")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX if self.wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.held = True
        except BlockingIOError:
            self.held = False
        return self

    def __exit__(self, *exc_info: Any) -> None:
        import fcntl

        if self.held:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()
        self.held = False


def run_identity(config: dict) -> dict:
    """The parts of a run's config.json that make it the same run (what `--resume` may not change)."""
    resumable = {name.split(".", 1)[1] for name in RESUMABLE_CHANGES if name.startswith("train.")}
    normalised = json.loads(json.dumps(config))  # tuples -> lists, as config.json holds them
    normalised["train"] = {key: value for key, value in normalised["train"].items() if key not in resumable}
    return normalised


def differing_keys(first: Any, second: Any, prefix: str = "") -> list[str]:
    """Dotted names of the entries where two nested dicts differ."""
    if not (isinstance(first, dict) and isinstance(second, dict)):
        return [] if first == second else [prefix.rstrip(".") or "(value)"]
    names = []
    for key in sorted(set(first) | set(second)):
        names += differing_keys(first.get(key), second.get(key), f"{prefix}{key}.")
    return names


def is_finished(summary: dict, train: Any) -> bool:
    """Whether a summary shows the run reached `train.steps` or used up `train.time_limit`."""
    if summary.get("env_steps", 0) >= train.steps:
        return True
    return (
        summary.get("stopped_by") == "time_limit"
        and train.time_limit > 0
        and summary.get("wall_seconds", 0.0) >= train.time_limit - 1.0
    )


def train_or_reuse(spec: Any, run_dir: Path, force: bool = False) -> dict:
    """The run's summary: read from a finished run, or from training it — fresh, resumed from its
    last checkpoint, or continued to more steps."""
    run_dir = Path(run_dir)
    config_path = run_dir / CONFIG_FILE
    summary_path = run_dir / "summary.json"
    if config_path.is_file():
        saved = json.loads(config_path.read_text())
        if run_identity(saved) != run_identity(spec.to_json()):
            if not force:
                changed = ", ".join(differing_keys(run_identity(saved), run_identity(spec.to_json()))[:8])
                raise RunDirectoryError(
                    f"{run_dir} holds a run with other settings than this study's ({changed}); pass --force to replace it, or choose another --out"
                )
            return Trainer(spec, run_dir, force=True).run()
        if summary_path.is_file():
            summary = json.loads(summary_path.read_text())
            if is_finished(summary, spec.train):
                print(f"  finished earlier ({summary.get('env_steps')} steps): reused", flush=True)
                return summary
        if (run_dir / "checkpoints" / "rank0").is_dir():
            print("  resuming from its last checkpoint", flush=True)
            return Trainer(spec, run_dir, resume=True).run()
        return Trainer(spec, run_dir, force=True).run()
    if run_dir.exists() and any(run_dir.iterdir()) and not force:
        raise RunDirectoryError(
            f"{run_dir} holds files but no run; pass --force to replace them, or choose another --out"
        )
    return Trainer(spec, run_dir, force=True).run()


def cached_measurement(run_dir: Path, name: str, key: dict, compute: Callable[[], Any]) -> Any:
    """compute(), remembered in RUN_DIR/study_eval.json under `name` with the settings `key` and
    the run's step count, so that a rerun of the study measures only what changed."""
    path = Path(run_dir) / STUDY_EVAL_FILE
    store = json.loads(path.read_text()) if path.is_file() else {}
    summary_path = Path(run_dir) / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    full_key = json.loads(
        json.dumps(
            {**key, "env_steps": summary.get("env_steps"), "updates": summary.get("updates")}, default=_json_default
        )
    )
    entry = store.get(name)
    if entry is not None and entry.get("key") == full_key:
        return entry["value"]
    value = compute()
    store[name] = {"key": full_key, "value": json.loads(json.dumps(value, default=_json_default))}
    path.write_text(json.dumps(store, indent=2))
    return store[name]["value"]


# ----------------------------------------------------------------------------------------------
# Curves and statistics


def eval_curve(run_dir: Path, metric: str = "eval/return") -> tuple[list[int], list[float]]:
    """(environment steps, values) of every evaluation logged in RUN_DIR/metrics.jsonl; where a
    resumed run logged a step twice, the later record wins."""
    path = Path(run_dir) / "metrics.jsonl"
    by_step: dict[int, float] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            record = json.loads(line)
            if metric in record:
                by_step[int(record["step"])] = float(record[metric])
    steps = sorted(by_step)
    return steps, [by_step[step] for step in steps]


def spread(values: Sequence[float]) -> dict[str, Any]:
    """mean, std (over seeds, population), min, max and n of finite values (None when there are none)."""
    finite = [float(value) for value in values if value is not None and math.isfinite(float(value))]
    if not finite:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    array = np.asarray(finite)
    return {
        "mean": float(array.mean()),
        "std": float(array.std()),
        "min": float(array.min()),
        "max": float(array.max()),
        "n": len(finite),
    }


def band(curves: Sequence[Sequence[float | None]]) -> dict[str, list[float | None]]:
    """Pointwise mean, min and max of equally long curves (None where no curve has a value)."""
    columns = list(zip(*curves)) if curves else []
    stats = [spread(column) for column in columns]
    return {name: [entry[name] for entry in stats] for name in ("mean", "min", "max")}


def aggregate_curves(curves: Sequence[tuple[list[int], list[float]]]) -> dict[str, list]:
    """Steps evaluated in every run, with the mean, min and max over runs at each."""
    if not curves:
        return {"steps": [], "mean": [], "min": [], "max": []}
    common = sorted(set.intersection(*(set(steps) for steps, _ in curves)))
    aligned = [[dict(zip(steps, values))[step] for step in common] for steps, values in curves]
    return {"steps": common, **band(aligned)}


def fmt(stats: dict[str, Any]) -> str:
    """ "mean +- std" of a `spread` (one decimal for returns of 10 or more, else 3 significant
    digits), or "n/a"."""
    if stats.get("mean") is None:
        return "n/a"
    return f"{return_text(stats['mean'])} +- {return_text(stats['std'])}"


def return_text(value: float) -> str:
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3g}"


def fmt_number(value: float | None, digits: int = 3) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}g}"


def counted(count: int, noun: str) -> str:
    """ "1 seed", "3 seeds": a count and its noun, plural unless the count is 1."""
    return f"{count} {noun}{'s' if count != 1 else ''}"


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A markdown table's lines: the column titles, the rule, then one line per row of cells."""
    return [
        "| " + " | ".join(columns) + " |",
        "|---" * len(columns) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def measured_phrase(runs: dict[str, list[RunResult]], seeds: int) -> str:
    """ "Measured at N steps over K seeds": how every study's comparison sentence begins."""
    all_runs = [run for group in runs.values() for run in group]
    return f"Measured at {steps_phrase(all_runs)} over {counted(seeds, 'seed')}"


def steps_phrase(runs: Sequence[RunResult]) -> str:
    """ "N steps" when every run stopped at N, else "N1-N2 steps"."""
    steps = sorted({int(run.summary.get("env_steps", 0)) for run in runs})
    return f"{steps[0]} steps" if len(steps) == 1 else f"{steps[0]}-{steps[-1]} steps"


def overlap_phrase(first: dict, second: dict) -> str:
    """Whether the seeds' [min, max] ranges of two spreads overlap, said in words."""
    if first.get("min") is None or second.get("min") is None:
        return ""
    if first["n"] < 2 or second["n"] < 2:
        return "one seed each, so no spread to compare"
    overlap = first["min"] <= second["max"] and second["min"] <= first["max"]
    return "the ranges over seeds overlap" if overlap else "the ranges over seeds do not overlap"


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot().close(figure)
    return path


def parse_study_arguments(cls: type, name: str, argv: Sequence[str], description: str) -> Any:
    return tyro.cli(cls, args=list(argv), prog=f"wmlab study {name}", description=description)


def study_entry(
    cls: type, name: str, description: str, study: Callable[[Any, Sequence[str]], dict]
) -> Callable[[list[str]], int]:
    """The `run(argv)` of `wmlab study NAME`: parse the study's arguments `cls`, run `study`, exit 0."""

    def run(argv: list[str]) -> int:
        study(parse_study_arguments(cls, name, argv, description), argv)
        return 0

    return run
