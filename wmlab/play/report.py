"""The report's "Play" section: the command that plays the run's world model in the browser."""

from __future__ import annotations

import html
import shlex
from pathlib import Path

from wmlab.core.errors import WmlabError
from wmlab.play.session import load_playable


def play_section(run_dir: str | Path) -> str | None:
    """An HTML fragment with `wmlab play RUN_DIR`, or the reason the run cannot be played; None
    for a directory without a checkpoint. Add it with
    `wmlab.report.html.register_section("Play", play_section)`."""

    run_dir = Path(run_dir)
    if not (run_dir / "checkpoints").is_dir():
        return None
    command = html.escape(f"wmlab play {shlex.quote(str(run_dir))}")
    try:
        playable = load_playable(run_dir)
    except WmlabError as error:
        return f"<p>This run's world model cannot be played: {html.escape(str(error))}</p>"
    return (
        f"<p>Play inside this run's {html.escape(playable.family)} world model with the keyboard, beside the real "
        f"environment: <code>{command}</code>, then open the address it prints (http://127.0.0.1:8765/).</p>"
    )
