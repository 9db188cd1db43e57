"""`wmlab bench dyna`: Sutton & Barto chapter 8 (Dyna maze, changing mazes, prioritized sweeping)."""

from __future__ import annotations

from wmlab.bench.common import parse_bench_arguments, prepare_run_dir, write_results
from wmlab.bench.dyna import dyna_markdown, format_dyna_table, run_dyna_benchmark


def run(argv: list[str]) -> int:
    arguments = parse_bench_arguments(
        "dyna",
        argv,
        "Reproduce Sutton & Barto chapter 8: steps per episode on the Dyna maze for n = 0, 5, 50; Dyna-Q against Dyna-Q+ on the blocking and shortcut mazes; prioritized sweeping's update count against Dyna-Q's.",
    )
    run_dir = prepare_run_dir(arguments)
    kwargs = {
        "quick": arguments.quick,
        "figures_dir": run_dir / "figures" if run_dir else None,
        "progress": arguments.progress,
    }
    if arguments.seeds is not None:
        kwargs["seeds"] = arguments.seeds
    results = run_dyna_benchmark(**kwargs)
    if run_dir is not None:
        results["figures"] = [f"figures/{name}" for name in results.get("figures", [])]
    print(format_dyna_table(results))
    write_results("dyna", results, arguments, run_dir, dyna_markdown(results))
    return 0
