"""The `wmlab` command: train | eval | report | list | bench.

    wmlab train --algo dyna-q --env dyna-maze --run-dir runs/maze
    wmlab train --algo mpc --env two-rooms-state --train.steps 20000 --agent.planner.horizon 10
    wmlab train --algo dreamer --env dmc:cartpole-swingup --env-kwargs '{"observation": "pixels"}' 
    wmlab train --resume runs/maze --train.steps 40000
    wmlab eval runs/maze --episodes 20
    wmlab report runs/maze
    wmlab list
    wmlab bench dyna --seeds 30 --out dyna.json

`wmlab train --algo NAME --help` documents every field of that algorithm's config.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Annotated

import tyro

from wmlab.core.errors import WmlabError
from wmlab.core.registry import UnknownNameError

DEFAULT_ALGORITHM = "dyna-q"
DEFAULT_ENV = "dyna-maze"
# Fields that may change when a run is resumed; anything else would make it another run.
RESUMABLE_CHANGES = {"train.steps", "train.progress", "train.device", "train.threads", "train.tensorboard", "train.eval_every", "train.eval_episodes", "train.log_every", "train.checkpoint_every"}

USAGE = """usage: wmlab COMMAND [options]

commands:
  train    train an agent and its world model (wmlab train --algo NAME --help)
  eval     evaluate a trained run's greedy agent (wmlab eval RUN_DIR)
  report   write RUN_DIR/report.html (learning curves, tables, figures)
  list     show every registered algorithm, model and environment
  envs     show the environment suites, their ids, spaces and install commands
  record   record episodes of any environment and policy to a dataset folder
  bench    run a benchmark: dyna, envs (wmlab bench NAME --help)
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    commands = {
        "train": train_command,
        "eval": eval_command,
        "report": report_command,
        "list": list_command,
        "envs": envs_command,
        "record": record_command,
        "bench": bench_command,
    }
    if command not in commands:
        print(f"wmlab: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    try:
        return commands[command](rest) or 0
    except (WmlabError, UnknownNameError) as error:
        print(f"wmlab {command}: error: {error}", file=sys.stderr)
        return 2


# --------------------------------------------------------------------------------------------
# train


def _option_value(argv: list[str], name: str) -> str | None:
    for index, argument in enumerate(argv):
        if argument == name and index + 1 < len(argv):
            return argv[index + 1]
        if argument.startswith(name + "="):
            return argument.split("=", 1)[1]
    return None


def _train_command_class(agent_config: type) -> type:
    """A dataclass for tyro: the run's identity plus the loop's and the algorithm's configs."""
    from wmlab.train.config import TrainConfig

    def documented(kind, help_text):
        return Annotated[kind, tyro.conf.arg(help=help_text)]

    return dataclasses.make_dataclass(
        "TrainCommand",
        [
            ("algo", documented(str, "Algorithm (wmlab list shows them)."), dataclasses.field(default=DEFAULT_ALGORITHM)),
            ("env", documented(str, "Environment: a wmlab name, a gymnasium id, or my_package.module:EnvId-v0."), dataclasses.field(default=DEFAULT_ENV)),
            ("env_kwargs", documented(str, 'Environment options as JSON, e.g. \'{"observation": "pixels"}\'.'), dataclasses.field(default="{}")),
            ("run_dir", documented(Path | None, "Run directory (default runs/ALGO-ENV-seedSEED)."), dataclasses.field(default=None)),
            ("force", documented(bool, "Replace a run directory that already holds a run."), dataclasses.field(default=False)),
            ("resume", documented(Path | None, "Continue the run in this directory from its last checkpoint."), dataclasses.field(default=None)),
            ("train", TrainConfig, dataclasses.field(default_factory=TrainConfig)),
            ("agent", agent_config, dataclasses.field(default_factory=agent_config)),
        ],
        frozen=True,
    )


def parse_train_arguments(argv: list[str]):
    """(RunSpec, run_dir, resume, force) from the command line."""
    from wmlab.core.config import differences
    from wmlab.core.registry import ALGORITHMS
    from wmlab.train.loop import RunSpec, load_run_spec

    resume_dir = _option_value(argv, "--resume")
    if resume_dir is not None:
        saved = load_run_spec(Path(resume_dir))
        command_class = _train_command_class(ALGORITHMS.get(saved.algorithm).load_config())
        default = command_class(algo=saved.algorithm, env=saved.env, env_kwargs=json.dumps(saved.env_kwargs), run_dir=Path(resume_dir), resume=Path(resume_dir), train=saved.train, agent=saved.agent)
        parsed = tyro.cli(command_class, args=argv, default=default, prog="wmlab train")
        changed = {f"train.{name}" for name in differences(saved.train, parsed.train)}
        changed |= {f"agent.{name}" for name in differences(saved.agent, parsed.agent)}
        changed |= {name for name in ("algo", "env", "env_kwargs") if getattr(parsed, name) != getattr(default, name)}
        refused = sorted(changed - RESUMABLE_CHANGES)
        if refused:
            raise WmlabError(f"--resume continues the saved run; these settings cannot change: {', '.join(refused)} (start a new run instead)")
        spec = RunSpec(algorithm=saved.algorithm, env=saved.env, env_kwargs=saved.env_kwargs, train=parsed.train, agent=saved.agent)
        return spec, Path(resume_dir), True, False

    algorithm = _option_value(argv, "--algo") or DEFAULT_ALGORITHM
    command_class = _train_command_class(ALGORITHMS.get(algorithm).load_config())
    parsed = tyro.cli(command_class, args=argv, prog="wmlab train", description=f"Train {algorithm}. " + (ALGORITHMS.get(algorithm).description or ""))
    run_dir = parsed.run_dir or Path("runs") / f"{parsed.algo}-{parsed.env.replace(':', '-').replace('/', '-')}-seed{parsed.train.seed}"
    try:
        env_kwargs = json.loads(parsed.env_kwargs)
    except json.JSONDecodeError as error:
        raise WmlabError(f"--env-kwargs must be a JSON object: {error}") from None
    if not isinstance(env_kwargs, dict):
        raise WmlabError(f"--env-kwargs must be a JSON object, got {parsed.env_kwargs!r}")
    spec = RunSpec(algorithm=parsed.algo, env=parsed.env, env_kwargs=env_kwargs, train=parsed.train, agent=parsed.agent)
    return spec, run_dir, False, parsed.force


def train_command(argv: list[str]) -> int:
    from wmlab.train.loop import Trainer

    spec, run_dir, resume, force = parse_train_arguments(argv)
    trainer = Trainer(spec, run_dir, resume=resume, force=force)
    summary = trainer.run()
    if trainer.rank == 0:
        print(json.dumps(summary, indent=2))
        print(f"run directory: {run_dir}  (wmlab report {run_dir})")
    return 0


# --------------------------------------------------------------------------------------------
# eval, report, list


@dataclasses.dataclass(frozen=True)
class EvalCommand:
    """Evaluate the greedy agent of a run's latest checkpoint in the real environment."""

    run_dir: tyro.conf.Positional[Path]
    """The run directory."""
    episodes: int = 10
    """Evaluation episodes."""
    seed: int = 123
    """Seed of the first evaluation episode (episode i uses seed + i)."""
    out: Path | None = None
    """Write the metrics as JSON here (default RUN_DIR/eval.json)."""



def eval_command(argv: list[str]) -> int:
    arguments = tyro.cli(EvalCommand, args=argv, prog="wmlab eval")
    from wmlab.eval.returns import evaluate_agent
    from wmlab.train.loop import load_trained_agent

    spec, agent = load_trained_agent(arguments.run_dir)
    metrics = evaluate_agent(agent, spec.env, episodes=arguments.episodes, seed=arguments.seed, env_kwargs=spec.env_kwargs)
    output = arguments.out or arguments.run_dir / "eval.json"
    output.write_text(json.dumps({"episodes": arguments.episodes, "seed": arguments.seed, **metrics}, indent=2))
    for key, value in metrics.items():
        print(f"{key:24s} {value:.4f}")
    print(f"written to {output}")
    return 0


def report_command(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: wmlab report RUN_DIR [--out FILE.html]\n\nWrite one self-contained HTML page for a run.")
        return 0
    from wmlab.report.html import build_report

    output = _option_value(argv, "--out")
    path = build_report(Path(argv[0]), Path(output) if output else None)
    print(f"report written to {path}")
    return 0


def list_command(argv: list[str]) -> int:
    from rich.console import Console
    from rich.table import Table

    from wmlab.core.registry import ALGORITHMS, ENVIRONMENTS, MODELS

    console = Console()
    for title, registry in (("Algorithms", ALGORITHMS), ("World models", MODELS), ("Environments", ENVIRONMENTS)):
        table = Table(title=title, title_justify="left", show_lines=False)
        table.add_column("name", style="bold")
        table.add_column("description")
        for entry in registry.entries():
            table.add_row(entry.name, entry.description)
        console.print(table)
    console.print("Any gymnasium id works too (e.g. CartPole-v1), and your own: --env my_package.module:EnvId-v0")
    return 0


def envs_command(argv: list[str]) -> int:
    from rich.console import Console
    from rich.table import Table

    from wmlab.envs.suites import describe_suites

    table = Table(title="Environment suites", title_justify="left", show_lines=True)
    for column in ("suite", "example ids", "observation / action", "status"):
        table.add_column(column)
    for row in describe_suites(probe="--no-probe" not in argv):
        probed = "\n".join(f"{key}: {row[key]}" for key in ("observation", "action") if row.get(key))
        spaces = row["description"] + ("\n" + (row.get("error") or probed) if (row.get("error") or probed) else "")
        status = "installed" if row["available"] else f"missing: {row['install']}"
        table.add_row(row["suite"], "\n".join(row["examples"]), spaces, status)
    Console().print(table)
    return 0


def record_command(argv: list[str]) -> int:
    from wmlab.data.dataset import record_command as record

    return record(argv) or 0


# --------------------------------------------------------------------------------------------
# bench


BENCHMARKS = {"dyna": "wmlab.bench.dyna_command:run", "envs": "wmlab.bench.envs_command:run"}


def bench_command(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: wmlab bench NAME [--seeds N] [--quick] [--out FILE.json] [--run-dir DIR]\n\nbenchmarks: {', '.join(BENCHMARKS)}")
        return 0
    name = argv[0]
    if name not in BENCHMARKS:
        import difflib

        close = difflib.get_close_matches(name, list(BENCHMARKS))
        raise UnknownNameError(f"unknown benchmark {name!r}." + (f" Did you mean: {', '.join(close)}?" if close else "") + f" Benchmarks: {', '.join(BENCHMARKS)}")
    from wmlab.core.registry import _load

    return _load(BENCHMARKS[name])(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
