"""`wmlab play`: the session on any WorldModel, the server against malformed and hostile input,
and the real page driven in headless Chromium (skipped, saying how to install, without it)."""

from __future__ import annotations

import base64
import contextlib
import http.client
import importlib.util
import io
import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium import spaces

pytest.importorskip("starlette", reason="wmlab play needs its extra: pip install 'wmlab[play]'")
pytest.importorskip("uvicorn", reason="wmlab play needs its extra: pip install 'wmlab[play]'")
pytest.importorskip("websockets", reason="wmlab play needs its extra: pip install 'wmlab[play]'")

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from wmlab.cli import main
from wmlab.core.errors import WmlabError
from wmlab.core.types import Trajectory
from wmlab.play import session as play_session
from wmlab.play.server import MAX_PENDING, BackgroundServer, create_app
from wmlab.play.session import (
    MAX_UPLOAD_BYTES,
    MAX_UPLOAD_CHARACTERS,
    PlaySession,
    ProtocolError,
    controls,
    load_playable,
    make_playable,
    parse_message,
)


def png_bytes(height: int = 30, width: int = 50, image_format: str = "PNG") -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, image_format)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A tiny Dreamer (RSSM) trained for a few steps on two-rooms pixels."""
    directory = tmp_path_factory.mktemp("play") / "dreamer"
    arguments = [
        "train",
        "--algo",
        "dreamer",
        "--env",
        "two-rooms",
        "--run-dir",
        directory,
        "--train.steps",
        40,
        "--train.learning-starts",
        30,
        "--train.batch-size",
        2,
        "--train.sequence-length",
        8,
        "--train.train-ratio",
        16,
        "--train.eval-every",
        0,
        "--train.eval-episodes",
        1,
        "--train.log-every",
        40,
        "--train.checkpoint-every",
        40,
        "--train.no-progress",
        "--train.no-tensorboard",
        "--agent.model.size",
        "tiny",
        "--agent.model.stochastic-size",
        4,
        "--agent.imagination-horizon",
        3,
    ]
    assert main([str(argument) for argument in arguments]) == 0
    return directory


@pytest.fixture(scope="module")
def playable(run_dir):
    return load_playable(run_dir)


@pytest.fixture(scope="module")
def server(playable):
    with BackgroundServer(create_app(playable, max_sessions=4)) as url:
        yield url


def ws_url(url: str) -> str:
    return url.replace("http://", "ws://") + "ws"


def receive(socket, kind: str, timeout: float = 30.0) -> dict:
    """The next message of `kind` (skipping others)."""
    deadline = time.monotonic() + timeout
    while True:
        message = json.loads(socket.recv(timeout=max(0.1, deadline - time.monotonic())))
        if message["type"] == kind:
            return message


@contextlib.contextmanager
def player(url: str):
    """(socket, hello, first frame) of a new player."""
    with connect(ws_url(url), max_size=None) as socket:
        yield socket, receive(socket, "hello"), receive(socket, "frame")


# --- the session, on the run and on any WorldModel --------------------------------------------


def test_a_run_plays_through_the_session(playable):
    session = PlaySession(playable, seed=3)
    frame = session.reset()
    assert frame.dream.shape == (64, 64, 3) and frame.dream.dtype == np.uint8 and frame.real.shape == (64, 64, 3)
    assert frame.step == 0 and frame.source == "reset"
    for _ in range(3):
        frame = session.step(np.array([1.0, 0.0], np.float32))
    assert frame.step == 3 and frame.action == [1.0, 0.0] and frame.model_ms > 0
    assert session.dream_from_real().source == "real"
    assert session.start_from_image(png_bytes()).source == "image"
    describe = playable.describe()
    assert describe["family"] == "RSSM" and describe["controls"]["kind"] == "box" and describe["knobs"] == []
    session.close()


def test_keys_follow_the_action_space_and_its_meanings():
    atari = controls(spaces.Discrete(6), ["NOOP", "FIRE", "UP", "RIGHT", "LEFT", "UPRIGHTFIRE"])
    keys = {action["name"]: action["keys"] for action in atari["actions"]}
    assert atari["idle"] == 0 and keys["NOOP"] == [] and not atari["turn_based"]
    assert keys["UP"] == [["ArrowUp"]] and keys["FIRE"] == [[" "]]
    assert sorted(keys["UPRIGHTFIRE"][0]) == sorted(["ArrowUp", "ArrowRight", " "])
    unnamed = controls(spaces.Discrete(7))
    reached = [action["keys"] for action in unnamed["actions"]]
    assert all(reached) and reached[0] == [["ArrowUp"]]  # every action has a key
    assert unnamed["idle"] is None and unnamed["turn_based"]  # no no-op: one step per key press
    minigrid = controls(spaces.Discrete(7), ["left", "right", "forward", "pickup", "drop", "toggle", "done"])
    assert [action["keys"][0] for action in minigrid["actions"][:3]] == [["ArrowLeft"], ["ArrowRight"], ["ArrowUp"]]
    box = controls(spaces.Box(np.array([-2.0, 0.0, -1.0], np.float32), np.array([2.0, 1.0, 1.0], np.float32)))
    assert [(d["minus"], d["plus"]) for d in box["dimensions"]][:2] == [
        ("ArrowLeft", "ArrowRight"),
        ("ArrowDown", "ArrowUp"),
    ]
    assert [d["rest"] for d in box["dimensions"]] == [0.0, 0.0, 0.0]


class ToyFamily(torch.nn.Module):
    """A family written after play/: only the protocol, plus a `denoising_steps` knob."""

    can_decode = True

    def __init__(self):
        super().__init__()
        self.calls = []

    def initial(self, batch_size):
        return {"position": torch.zeros(batch_size, 2)}

    def observe(self, obs, action, is_first, state):
        image = torch.as_tensor(np.asarray(obs["image"])).float()
        position = torch.stack([image[:, -1, ..., 0].mean((-1, -2)), image[:, -1, ..., 1].mean((-1, -2))], -1) / 255
        return {"position": position[:, None]}, {"position": position}

    def imagine(self, state, actions, horizon, denoising_steps=None):
        self.calls.append(denoising_steps)
        step = torch.as_tensor(actions).float()[:, 0] * 0.1
        position = (state["position"] + step).clamp(0, 1)
        ones = torch.ones(position.shape[0], 1)
        return Trajectory(
            states={"position": position[:, None]}, actions=step[:, None], rewards=0 * ones, continues=ones
        )

    def decode(self, state):
        position = state["position"]
        image = torch.zeros(*position.shape[:-1], 64, 64, 3)
        image[..., 0] = position[..., :1, None]
        image[..., 1] = position[..., 1:, None]
        return {"image": image}


def test_a_new_family_plugs_in_through_the_protocol_with_its_knob(tmp_path):
    model = ToyFamily()
    playable = make_playable(model, "two-rooms", {}, tmp_path, "toy")
    assert playable.describe()["knobs"][0]["name"] == "denoising_steps"
    session = PlaySession(playable)
    session.reset()
    command = parse_message(json.dumps({"type": "settings", "denoising_steps": 7}), playable)
    session.settings(**{key: value for key, value in command.items() if key != "type"})
    right = session.step(np.array([1.0, 0.0], np.float32)).dream
    up = session.step(np.array([0.0, 1.0], np.float32)).dream
    assert model.calls[-1] == 7
    assert not np.array_equal(right, up)
    with pytest.raises(ProtocolError, match="denoising_steps must be a number"):
        parse_message(json.dumps({"type": "settings", "denoising_steps": 1000}), playable)


def test_a_family_that_starts_from_several_frames_gets_them(tmp_path):
    model = ToyFamily()
    model.context_frames = 3
    seen = []
    observe = model.observe
    model.observe = lambda obs, *rest: seen.append(np.asarray(obs["image"]).shape[:2]) or observe(obs, *rest)
    playable = make_playable(model, "two-rooms", {}, tmp_path)
    session = PlaySession(playable)
    session.reset()
    assert seen[-1] == (1, 3)
    with pytest.raises(ProtocolError, match="needs 3 real frames"):
        session.start_from_image(png_bytes())
    assert "needs 3 real frames" in playable.describe()["upload_refusal"]


def test_world_models_v_m_c_plays_with_its_temperature(tmp_path):
    import wmlab.models.vae_mdnrnn as vae

    pixels = spaces.Dict({"image": spaces.Box(0, 255, (64, 64, 3), np.uint8)})
    config = vae.VAEMDNRNNConfig(
        vae=vae.ConvVAEConfig(latent_size=4, channels=(4, 4, 4, 4)), mdnrnn=vae.MDNRNNConfig(hidden_size=8, mixtures=2)
    )
    model = vae.VAEMDNRNN(config, pixels, spaces.Box(-1.0, 1.0, (2,), np.float32))
    playable = make_playable(model, "two-rooms", {}, tmp_path, "world-models")
    assert [knob["name"] for knob in playable.describe()["knobs"]] == ["temperature"]
    session = PlaySession(playable)
    session.reset()
    session.settings(temperature=0.0)
    assert session.dream.imagine_kwargs == {"temperature": 0.0}
    assert session.step(np.array([0.5, -0.5], np.float32)).dream.shape == (64, 64, 3)


class NoDecoder(ToyFamily):
    can_decode = False

    def decode(self, state):
        raise NotImplementedError("this family predicts in representation space and has no decoder")


def test_models_that_cannot_decode_are_refused_with_the_reason(tmp_path):
    with pytest.raises(WmlabError, match="has no decoder"):
        make_playable(NoDecoder(), "two-rooms", {}, tmp_path)
    from wmlab.models.tdmpc import SIZES as TDMPC_SIZES
    from wmlab.models.tdmpc import TDMPCModel, TDMPCModelConfig

    vectors = spaces.Dict({"vector": spaces.Box(-1.0, 1.0, (3,), np.float32)})
    tdmpc = TDMPCModel(
        TDMPCModelConfig(size=TDMPC_SIZES.preset("5M", encoder_width=16, mlp_width=16, latent_size=16, q_functions=2)),
        vectors,
        spaces.Box(-1.0, 1.0, (2,), np.float32),
    )
    with pytest.raises(WmlabError, match="cannot decode"):
        make_playable(tdmpc, "two-rooms-state", {}, tmp_path)


def test_the_command_refuses_a_missing_run(tmp_path, capsys):
    assert main(["play", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_uploads_are_resized_or_refused():
    image = play_session.decode_image(png_bytes(30, 50), (64, 64, 3))
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert play_session.decode_image(png_bytes(80, 40, "JPEG"), (64, 64, 1)).shape == (64, 64, 1)
    with pytest.raises(ProtocolError, match="not an image"):
        play_session.decode_image(b"hello, not an image", (64, 64, 3))
    with pytest.raises(ProtocolError, match="PNG or JPEG"):
        play_session.decode_image(png_bytes(image_format="GIF"), (64, 64, 3))
    with pytest.raises(ProtocolError, match="too big"):
        play_session.decode_image(b"\x89PNG" + bytes(MAX_UPLOAD_BYTES), (64, 64, 3))


# --- the server ---------------------------------------------------------------------------------


def test_the_server_plays_and_answers_bad_messages_with_errors(server):
    with player(server) as (socket, hello, first):
        assert hello["family"] == "RSSM" and hello["width"] == 64 and first["step"] == 0
        socket.send(json.dumps({"type": "step", "action": [1.0, -1.0], "seq": 1}))
        frame = receive(socket, "frame")
        assert frame["seq"] == 1 and frame["step"] == 1 and frame["action"] == [1.0, -1.0]
        assert len(base64.b64decode(frame["dream"])) == 64 * 64 * 3
        bad = [
            ("not json {", "not JSON"),
            ("[1, 2]", "JSON object"),
            ("[" * 3000 + "]" * 3000, "nested too deeply"),
            (json.dumps({"type": "step", "action": [float("nan"), 0.0]}), "finite"),
            (json.dumps({"type": "teleport"}), "unknown message type"),
            (json.dumps({"type": "step", "action": [5.0, 0.0]}), "out of range"),
            (json.dumps({"type": "step", "action": [0.0]}), "list of 2 numbers"),
            (json.dumps({"type": "step", "action": ["NaN", 0.0]}), "list of 2 numbers"),
            (json.dumps({"type": "step", "action": 3}), "list of 2 numbers"),
            (json.dumps({"type": "settings", "temperature": 1.0}), "unknown setting"),
            (json.dumps({"type": "reset", "seed": -4}), "seed must be"),
            (json.dumps({"type": "image", "data": "%%%"}), "not valid base64"),
            (json.dumps({"type": "image", "data": base64.b64encode(b"GIF89a nonsense").decode()}), "not an image"),
            (
                json.dumps({"type": "image", "data": base64.b64encode(bytes(MAX_UPLOAD_BYTES + 100)).decode()}),
                "too big",
            ),
            (json.dumps({"type": "step", "action": [0.0, 0.0], "pad": "x" * 5000}), "message too long"),
        ]
        for text, expected in bad:
            socket.send(text)
            assert expected in receive(socket, "error")["message"], text
        socket.send(b"\x00\x01binary")
        assert "JSON text" in receive(socket, "error")["message"]
        # still serving this client after all that
        socket.send(json.dumps({"type": "step", "action": [0.0, 1.0], "seq": 2}))
        assert receive(socket, "frame")["step"] == 2
        socket.send(json.dumps({"type": "image", "data": base64.b64encode(png_bytes()).decode()}))
        assert receive(socket, "frame")["source"] == "image"


def test_a_flood_is_closed_while_other_players_are_served(server):
    outcome = {}

    def flood(flooder):
        try:
            for index in range(1000):
                flooder.send(json.dumps({"type": "step", "action": [0.0, 0.0], "seq": index + 1}))
        except ConnectionClosed:
            pass
        errors = 0
        try:
            while True:
                message = json.loads(flooder.recv(timeout=30))
                errors += message["type"] == "error" and "too many messages" in message["message"]
        except ConnectionClosed as closed:
            outcome["code"] = closed.rcvd.code if closed.rcvd else None
        outcome["errors"] = errors

    with player(server) as (flooder, _, _), player(server) as (other, _, _):
        thread = threading.Thread(target=flood, args=(flooder,))
        thread.start()
        for seq in range(1, 6):
            other.send(json.dumps({"type": "step", "action": [1.0, 0.0], "seq": seq}))
            assert receive(other, "frame")["seq"] == seq
        thread.join(timeout=60)
    assert outcome["code"] == 1008 and outcome["errors"] > MAX_PENDING
    with player(server) as (_, hello, _):  # and new players are welcome afterwards
        assert hello["family"] == "RSSM"


def test_a_message_bigger_than_an_upload_closes_cleanly(server):
    with player(server) as (socket, _, _):
        socket.send(json.dumps({"type": "image", "data": "A" * (MAX_UPLOAD_CHARACTERS + 8192)}))
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                socket.recv(timeout=30)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    with player(server) as (_, hello, _):
        assert hello["family"] == "RSSM"


def get(url: str, path: str) -> tuple[int, bytes]:
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.request("GET", path)  # sent as written: no client-side clean-up of '..'
    response = connection.getresponse()
    return response.status, response.read()


def test_only_the_static_folder_and_recordings_are_served(server):
    status, body = get(server, "/")
    assert status == 200 and b"wmlab play" in body
    assert get(server, "/static/play.js")[0] == 200
    for path in [
        "/static/../session.py",
        "/static/%2e%2e/session.py",
        "/static/..%2fsession.py",
        "/static/../../../../etc/passwd",
        "/static/%2e%2e/%2e%2e/%2e%2e/pyproject.toml",
        "/recordings/..%2fconfig.json",
        "/recordings/../config.json",
        "/recordings/recording-20260101-000000-1.gif",
        "/static//etc/passwd",
    ]:
        status, body = get(server, path)
        assert status in (400, 404), path
        assert b"import" not in body and b"root:" not in body and b"algorithm" not in body, path


def test_cross_origin_pages_cannot_connect(server):
    with pytest.raises(Exception) as refused:
        connect(ws_url(server), origin="http://evil.example", open_timeout=10).recv(timeout=5)
    assert "403" in str(refused.value) or "1008" in str(refused.value)


def test_recordings_are_written_inside_the_run_directory_only(server, run_dir, tmp_path, monkeypatch):
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    monkeypatch.chdir(empty)
    monkeypatch.setattr(tempfile, "tempdir", str(empty))
    before = {path for path in run_dir.rglob("*")}
    formats = ["gif"] + (["mp4"] if importlib.util.find_spec("imageio_ffmpeg") is not None else [])
    saved = {}
    with player(server) as (socket, _, _):
        seq = 0
        for output in formats:
            socket.send(json.dumps({"type": "record", "on": True}))
            receive(socket, "recording")
            for _ in range(6):
                seq += 1
                socket.send(json.dumps({"type": "step", "action": [1.0, 0.0], "seq": seq}))
                receive(socket, "frame")
            socket.send(json.dumps({"type": "record", "on": False, "format": output}))
            saved[output] = receive(socket, "recording")
    status, body = get(server, saved["gif"]["url"])
    assert status == 200 and body[:6] == b"GIF89a"
    if "mp4" in saved:
        status, body = get(server, saved["mp4"]["url"])
        assert status == 200 and body[4:8] == b"ftyp"
    new = {path for path in run_dir.rglob("*")} - before
    assert new and all(path.relative_to(run_dir).parts[0] == "play" for path in new)
    assert list(empty.iterdir()) == []


# --- the real page in headless Chromium ---------------------------------------------------------


def test_without_chromium_the_browser_tests_say_how_to_install(monkeypatch):
    from wmlab.play import measure

    monkeypatch.setattr(measure, "CHROMIUM", "/nonexistent/chromium")
    monkeypatch.setattr(measure.shutil, "which", lambda name: None)
    message = measure.browser_missing()
    assert "apt-get install -y chromium" in message and "pip install playwright" in message


def test_the_page_plays_in_headless_chromium(server, tmp_path):
    from wmlab.play.measure import browser_missing, open_page

    missing = browser_missing()
    if missing:
        pytest.skip(missing)

    last = "() => window.wmlabPlay.lastFrame"
    with open_page(server + "?speed=0", str(tmp_path / "profile")) as (page, errors):
        page.wait_for_function("window.wmlabPlay.frames > 5", timeout=30_000)
        assert "←" in page.inner_text("#keys")  # the legend shows the arrows of the Box action

        def hold(key: str) -> dict:
            page.keyboard.down(key)
            page.wait_for_function(
                f"() => {{ const f = window.wmlabPlay.lastFrame; return f.action && f.action[0] === {1 if key == 'ArrowRight' else -1}; }}",
                timeout=10_000,
            )
            frames = page.evaluate("() => window.wmlabPlay.frames")
            page.wait_for_function(f"() => window.wmlabPlay.frames > {frames + 3}", timeout=10_000)
            frame = page.evaluate(last)
            page.keyboard.up(key)
            return frame

        right, left = hold("ArrowRight"), hold("ArrowLeft")
        assert right["action"] == [1.0, 0.0] and left["action"] == [-1.0, 0.0]
        assert right["dream"] != left["dream"]
        assert page.evaluate("() => window.wmlabPlay.latencies.length") >= 2
        page.wait_for_function("() => window.wmlabPlay.stats.fps > 0", timeout=10_000)
        assert float(page.inner_text("#fps")) > 0

        page.keyboard.press("p")  # pause, then reset: the step count starts again
        page.wait_for_timeout(200)
        paused_at = page.evaluate(last)["step"]
        assert paused_at > 5
        page.click("#reset")
        page.wait_for_function(
            "() => window.wmlabPlay.lastFrame.step === 0 && window.wmlabPlay.lastFrame.source === 'reset'",
            timeout=10_000,
        )
        page.keyboard.press(".")
        page.wait_for_function("() => window.wmlabPlay.lastFrame.step === 1", timeout=10_000)
        page.keyboard.press("p")
        page.wait_for_function("() => window.wmlabPlay.lastFrame.step > 3", timeout=10_000)

        page.click("#record")
        page.wait_for_timeout(300)
        with page.expect_download(timeout=30_000) as download:
            page.click("#record")
        assert Path(download.value.path()).read_bytes()[:6] == b"GIF89a"

        upload = tmp_path / "start.png"
        upload.write_bytes(png_bytes())
        page.set_input_files("#upload", str(upload))
        page.wait_for_function("() => window.wmlabPlay.lastFrame.source === 'image'", timeout=10_000)
        assert errors == []


def test_the_report_links_to_the_command_that_plays_the_run(run_dir, tmp_path):
    from wmlab.play.report import play_section

    assert f"wmlab play {run_dir}" in play_section(run_dir)
    assert play_section(tmp_path) is None


class DiscreteToy(ToyFamily):
    """ToyFamily for a Discrete space: action i moves along direction i."""

    def imagine(self, state, actions, horizon, denoising_steps=None):
        index = torch.as_tensor(actions).long()[:, 0]
        directions = torch.tensor([[-1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
        return super().imagine(state, directions[index % 4][:, None], horizon, denoising_steps)


def test_a_turn_based_discrete_game_steps_once_per_key_in_chromium(tmp_path):
    from wmlab.play.measure import browser_missing, launch

    missing = browser_missing()
    if missing:
        pytest.skip(missing)
    pytest.importorskip("minigrid", reason="MiniGrid is an optional suite: pip install 'wmlab[minigrid]'")
    from playwright.sync_api import sync_playwright

    playable = make_playable(DiscreteToy(), "minigrid:MiniGrid-Empty-8x8-v0", {}, tmp_path, "toy")
    with BackgroundServer(create_app(playable)) as url, sync_playwright() as playwright:
        context = launch(playwright, str(tmp_path / "profile"))
        try:
            page = context.new_page()
            page.goto(url + "?speed=0")
            page.wait_for_function("window.wmlabPlay && window.wmlabPlay.frames >= 1", timeout=30_000)
            assert "forward" in page.inner_text("#keys") and "one step per key press" in page.inner_text("#keys")
            page.wait_for_timeout(300)
            assert page.evaluate("() => window.wmlabPlay.lastFrame.step") == 0  # no key, no step
            for expected, key in enumerate(["ArrowUp", "ArrowRight", "2"], start=1):
                page.keyboard.press(key)
                page.wait_for_function(f"() => window.wmlabPlay.lastFrame.step === {expected}", timeout=10_000)
            actions = page.evaluate("() => window.wmlabPlay.lastFrame.action")
            assert actions == 4  # '2' is the key of the fifth action, 'drop'
        finally:
            context.close()
