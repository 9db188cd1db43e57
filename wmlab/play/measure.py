"""Frame rate and key-to-frame latency of the play page, measured in a real headless browser.

    wmlab bench play RUN_DIR [--seconds 20] [--presses 40] [--speed 0] [--no-real] [--screenshot FILE]

The browser is the system's Chromium (Debian's `chromium` package) driven by Playwright's Python
package; nothing downloads a browser (never `playwright install`). The page itself measures:
frames per second over its last 30 frames, and for each key press the time from the browser's
key event to the end of drawing the first frame made with that key's action. Here we also count
frames over the whole window, and read the model's own time per step from the frames.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import tyro

from wmlab.core.errors import WmlabError
from wmlab.play.server import BackgroundServer, create_app
from wmlab.play.session import load_playable

CHROMIUM = "/usr/bin/chromium"
#: Headless, no GPU, and nothing that reaches the network on its own.
CHROMIUM_ARGUMENTS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
INSTALL_HINT = "install the browser and its driver: apt-get install -y chromium && pip install playwright (never `playwright install`: it downloads a browser)"


def browser_missing() -> str | None:
    """None when Chromium and Playwright's Python package are here, else what to install."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return f"Playwright's Python package is missing: {INSTALL_HINT}"
    if not Path(CHROMIUM).is_file() and shutil.which("chromium") is None:
        return f"{CHROMIUM} is missing: {INSTALL_HINT}"
    return None


def launch(playwright, user_data_dir: str | None = None, width: int = 1280, height: int = 720):
    """A fresh headless Chromium context (its own profile folder) with the page's security
    policy bypassed for test scripts only (Playwright's waits evaluate strings)."""
    executable = CHROMIUM if Path(CHROMIUM).is_file() else shutil.which("chromium")
    return playwright.chromium.launch_persistent_context(
        user_data_dir or tempfile.mkdtemp(prefix="wmlab-play-browser-"),
        executable_path=executable,
        headless=True,
        args=CHROMIUM_ARGUMENTS,
        bypass_csp=True,
        viewport={"width": width, "height": height},
        accept_downloads=True,
    )


@contextlib.contextmanager
def open_page(url: str, user_data_dir: str | None = None, timeout_ms: int = 60_000) -> Iterator[tuple[Any, list[str]]]:
    """The play page at `url` in a fresh headless Chromium (`launch`), once it has drawn its first
    frame: yields (page, errors), `errors` collecting the page's uncaught errors as they happen.
    The browser closes on leaving."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = launch(playwright, user_data_dir)
        try:
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(url)
            page.wait_for_function("window.wmlabPlay && window.wmlabPlay.lastFrame", timeout=timeout_ms)
            yield page, errors
        finally:
            context.close()


def read_stats(page) -> dict:
    return page.evaluate(
        "() => ({frames: window.wmlabPlay.frames, latencies: window.wmlabPlay.latencies.slice(), stats: {...window.wmlabPlay.stats}, model_ms: window.wmlabPlay.lastFrame && window.wmlabPlay.lastFrame.model_ms})"
    )


def measure(
    url: str,
    seconds: float = 20.0,
    presses: int = 40,
    speed: float = 0,
    real: bool = True,
    screenshot: Path | None = None,
) -> dict:
    """Open the page at `url`, let it run `seconds`, pressing arrow keys `presses` times along the
    way (a turn-based page: the next key as soon as a frame is drawn, `_press_turns`); return frame
    rates, latencies and the model's time per step (milliseconds)."""
    query = f"?speed={speed:g}" + ("" if real else "&real=0")
    with open_page(url + query) as (page, errors):
        controls = page.evaluate("() => window.wmlabPlay.info.controls")
        if controls["kind"] == "discrete" and controls["turn_based"]:
            final, start_frames, started, model_times = _press_turns(page, controls, seconds)
        else:
            page.wait_for_function("window.wmlabPlay.frames > 10", timeout=60_000)
            page.evaluate("() => { window.wmlabPlay.latencies.length = 0; }")
            model_times = []
            start_frames, started = read_stats(page)["frames"], time.perf_counter()
            keys = ["ArrowRight", "ArrowUp", "ArrowLeft", "ArrowDown"]
            hold = seconds / max(presses, 1)
            for index in range(presses):
                page.keyboard.down(keys[index % len(keys)])
                time.sleep(hold / 2)
                model_times.append(read_stats(page)["model_ms"])
                page.keyboard.up(keys[index % len(keys)])
                time.sleep(hold / 2)
            remaining = seconds - (time.perf_counter() - started)
            if remaining > 0:
                time.sleep(remaining)
            final = read_stats(page)
        elapsed = time.perf_counter() - started
        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot))
        if errors:
            raise WmlabError(f"the page raised: {errors[0]}")
    latencies = sorted(final["latencies"])
    model_times = [value for value in model_times if value is not None]
    return {
        "frames_per_second": (final["frames"] - start_frames) / elapsed,
        "page_fps_last_30_frames": final["stats"]["fps"],
        "key_to_frame_ms_median": statistics.median(latencies) if latencies else None,
        "key_to_frame_ms_p90": latencies[int(0.9 * (len(latencies) - 1))] if latencies else None,
        "key_presses_measured": len(latencies),
        "model_ms_median": statistics.median(model_times) if model_times else None,
        "seconds": elapsed,
        "speed_cap": speed,
        "real_environment": real,
    }


def _press_turns(page, controls: dict, seconds: float) -> tuple[dict, int, float, list]:
    """A turn-based page (one step per key press: MiniGrid, Genie's latent actions) played as fast
    as it answers: the next action's key is pressed as soon as the last frame is drawn, cycling
    through the actions. Returns (final stats, frames at the start, start time, model times)."""
    keys = [action["keys"][0][0] for action in controls["actions"] if action["keys"]]
    page.evaluate("() => { window.wmlabPlay.latencies.length = 0; }")
    start_frames, started = read_stats(page)["frames"], time.perf_counter()
    model_times, index = [], 0
    idle = "() => window.wmlabPlay.turns.length === 0 && !window.wmlabPlay.inFlight"
    while time.perf_counter() - started < seconds:
        page.wait_for_function(idle, timeout=60_000, polling=1)
        page.keyboard.press(keys[index % len(keys)])
        index += 1
        model_times.append(read_stats(page)["model_ms"])
    page.wait_for_function(idle, timeout=60_000, polling=1)
    return read_stats(page), start_frames, started, model_times


@dataclass(frozen=True)
class BenchPlay:
    """Frame rate and key-to-frame latency of `wmlab play RUN_DIR` in headless Chromium."""

    run_dir: tyro.conf.Positional[Path]
    """The run directory whose world model is played."""
    seconds: float = 20.0
    """How long the page runs while measured."""
    presses: int = 40
    """Arrow-key presses spread over that time (each a latency sample)."""
    speed: float = 0.0
    """The page's game-speed cap in frames per second (0: the model's own pace)."""
    real: bool = True
    """Step the real environment beside the dream (as the page does by default)."""
    threads: int = 1
    """Torch CPU threads of the server."""
    screenshot: Path | None = None
    """Save a screenshot of the page at the end."""
    out: Path | None = None
    """Write the numbers as JSON here."""


def run(argv: list[str]) -> int:
    arguments = tyro.cli(BenchPlay, args=argv, prog="wmlab bench play")
    missing = browser_missing()
    if missing:
        raise WmlabError(missing)
    import torch

    torch.set_num_threads(arguments.threads)
    playable = load_playable(arguments.run_dir)
    with BackgroundServer(create_app(playable)) as url:
        result = measure(
            url, arguments.seconds, arguments.presses, arguments.speed, arguments.real, arguments.screenshot
        )
    result.update(
        real_environment=arguments.real and playable.start_frames is None,
        run=str(arguments.run_dir),
        family=playable.family,
        algorithm=playable.algorithm,
        env=playable.env_id,
        image=list(playable.image_size),
        threads=arguments.threads,
    )
    text = json.dumps(result, indent=2)
    print(text)
    if arguments.out is not None:
        arguments.out.write_text(text)
    return 0
