"""`wmlab bench envs`: environment steps per second through wmlab against the raw libraries."""

from __future__ import annotations

from wmlab.bench import envs_extra
from wmlab.bench.common import parse_bench_arguments, prepare_run_dir, write_results
from wmlab.bench.envs import envs_markdown, envs_tables, format_envs_table, run_envs_benchmark


def run(argv: list[str]) -> int:
    arguments = parse_bench_arguments(
        "envs",
        argv,
        "Measure environment steps per second through wmlab (make_env, dict observations) against the raw "
        "library doing the same work (dm_control from pixels, Atari 64x64, MiniGrid 64x64 RGB, Crafter), and dm_control's frame time with "
        "and without shadows, reflections and skybox. --seeds sets the repetitions per row (default 5).",
    )
    run_dir = prepare_run_dir(arguments)
    results = run_envs_benchmark(quick=arguments.quick, seeds=arguments.seeds or 5, progress=arguments.progress)

    extra = envs_extra.run_envs_benchmark(
        quick=arguments.quick, repetitions=arguments.seeds or envs_extra.DEFAULT_REPETITIONS
    )
    for row in extra["rows"]:
        row["suite"] = f"{row['suite']} {extra['settings']['suites'][row['suite']]}"
        row.update({key: round(value, 1) for key, value in row.items() if isinstance(value, float)})
    results["rows"] += extra["rows"]
    results["settings"]["minigrid_crafter"] = extra["settings"]
    results["tables"] = envs_tables(results)
    print(format_envs_table(results))
    write_results("envs", results, arguments, run_dir, envs_markdown(results))
    return 0
