"""`python -m jaxdqn.evaluate --video FILE` (jaxdqn.video): greedy episodes of a saved agent drawn into a GIF or MP4.

One tiny CartPole checkpoint is trained in-process (`checkpoint`); the CLI tests call `jaxdqn.evaluate.main`
in-process too. Files are read back with Pillow (and imageio for MP4): the frame count is each episode's
length + 1 (its reset state, then one frame per step), capped by --video_max_frames, and the lengths and returns
are those `jaxdqn.evaluate.evaluate` reports for the same episodes. The MinAtar test draws a randomly
initialised MinAtar Q-network's greedy episode through the module's functions, without a checkpoint. Bad input
is one line on stderr, exit code 2, no file, and no checkpoint restored (`load_policy` is never called).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
from gymnax.environments.classic_control.cartpole import CartPole
from PIL import Image

from jaxdqn import evaluate, train, video

TINY = ["--env", "cartpole", "--num_envs", "16", "--hidden_sizes", "16", "--chunk_steps", "64",
        "--total_steps", "128", "--buffer_size", "128", "--batch_size", "16", "--updates_per_step", "1",
        "--learning_starts", "32", "--eps_decay_steps", "64", "--eval_frequency", "128", "--eval_episodes", "2",
        "--quiet", "--no_compile_cache"]
HAS_MP4_ENCODER = all(importlib.util.find_spec(name) is not None for name in ("imageio", "imageio_ffmpeg"))
CART, POLE = (40, 52, 70), (214, 140, 60)  # jaxdqn.video.CartPoleScene's colours


class PaintedCartPole(CartPole):
    """CartPole with its own `render`: a flat frame, red while the pole leans right, blue otherwise, with a
    green band on the left; nothing like jaxdqn's CartPole scene."""

    def render(self, state, params):
        frame = np.empty((40, 64, 3), np.uint8)
        frame[:] = (200, 30, 30) if float(state.theta) > 0 else (30, 30, 200)
        frame[:, :4] = (10, 220, 10)
        return frame


class BadlyPaintedCartPole(CartPole):
    def render(self, state, params):
        return np.zeros((40, 64, 3), np.float32)  # not uint8


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("video")
    assert train.main([*TINY, "--log_dir", str(root / "log"), "--save_model", str(root / "ckpt")]) == 0
    return root / "ckpt"


def run_evaluate(capsys, checkpoint: Path, *args) -> tuple[int, str, str]:
    code = evaluate.main(["--load_model", str(checkpoint), "--no_compile_cache", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def gif_frames(path: Path) -> tuple[list[np.ndarray], list[int]]:
    """The GIF's frames as RGB arrays and their durations (ms)."""
    frames, durations = [], []
    with Image.open(path) as image:
        for index in range(image.n_frames):
            image.seek(index)
            durations.append(image.info["duration"])
            frames.append(np.asarray(image.convert("RGB")))
    return frames, durations


def has_colour(frame: np.ndarray, colour) -> bool:
    return bool(np.all(frame == np.asarray(colour, np.uint8), axis=-1).any())


def test_cartpole_gif_shows_the_evaluated_episodes(capsys, checkpoint, tmp_path):
    path = tmp_path / "agent.gif"
    code, out, err = run_evaluate(capsys, checkpoint, "--video", path, "--video_episodes", 2, "--seed", 3)
    assert code == 0, err
    assert err == ""
    assert len(out.splitlines()) == 1 and out.startswith(f"wrote {path}: 2 greedy episodes of CartPole-v1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agent.gif"]  # no eval.json, no temporary file
    assert not (checkpoint / "eval.json").exists()

    expected = evaluate.evaluate(checkpoint, episodes=2, seed=3)  # the same episodes, evaluated
    lengths = [int(length) for length in expected["lengths"]]
    assert f"returns {expected['returns'][0]:g}, {expected['returns'][1]:g}" in out
    frames, durations = gif_frames(path)
    assert len(frames) == sum(length + 1 for length in lengths)
    assert all(frame.shape == (300 + video.CAPTION_HEIGHT, 480, 3) for frame in frames)
    # 25 fps, and the last frame of each episode held for a second.
    ends = {lengths[0], lengths[0] + lengths[1] + 1}
    assert [d for i, d in enumerate(durations) if i in ends] == [1000, 1000]
    assert {d for i, d in enumerate(durations) if i not in ends} == {40}
    # The cart and the pole are drawn in every frame; the caption counts the steps.
    assert all(has_colour(frame, CART) and has_colour(frame, POLE) for frame in frames)
    assert all(has_colour(frame[-video.CAPTION_HEIGHT:], video.CAPTION_TEXT) for frame in frames)
    # The scene moves: an episode's last frame is not its first.
    assert not np.array_equal(frames[0][:300], frames[lengths[0]][:300])


def test_own_render_and_frame_cap(capsys, checkpoint, tmp_path):
    """An env's own render draws the frames; --video_max_frames cuts the episode (CartPole lasts longer than 4
    steps: the pole cannot pass 12 degrees sooner)."""
    path = tmp_path / "painted.gif"
    code, out, err = run_evaluate(capsys, checkpoint, "--video", path, "--env", f"{__name__}:PaintedCartPole",
                                  "--video_max_frames", 5, "--video_fps", 50)
    assert code == 0, err
    assert "return 4, length 4; episode 1 cut at the frame cap; 5 frames of 64x60 at 50 fps" in out
    frames, durations = gif_frames(path)
    assert len(frames) == 5
    assert durations == [20, 20, 20, 20, 1000]
    assert all(frame.shape == (40 + video.CAPTION_HEIGHT, 64, 3) for frame in frames)
    assert all(tuple(frame[20, 1]) == (10, 220, 10) for frame in frames)
    assert all(tuple(frame[20, 30]) in {(200, 30, 30), (30, 30, 200)} for frame in frames)


def test_minatar_random_network(tmp_path):
    import jax
    import jax.numpy as jnp

    from jaxdqn.config import TrainConfig
    from jaxdqn.networks import make_network

    renderer, name, env, env_params = video.renderer_for("Breakout-MinAtar")
    obs_shape = env.observation_space(env_params).shape
    network = make_network(obs_shape, env.action_space(env_params).n, TrainConfig(env=name).validate())
    params = network.init(jax.random.key(1), jnp.zeros((1, *obs_shape), jnp.float32))

    def policy(obs):
        return jnp.argmax(network.apply(params, obs), axis=-1).astype(jnp.int32)

    options = video.VideoOptions(tmp_path / "breakout.gif", episodes=1, max_frames=40, seed=0).validate()
    episodes = video.play(env, env_params, policy, options)
    video.write(options.path, renderer, episodes, name, renderer.fps)
    frames, durations = gif_frames(options.path)
    expected = list(video.frames(renderer, episodes, name))
    assert len(frames) == len(expected) == episodes[0].length + 1 <= 40
    assert durations[:-1] == [100] * (len(frames) - 1)  # grid games: 10 fps
    for frame, drawn in zip(frames, expected):  # the GIF holds the drawn frames exactly (one palette)
        assert frame.shape == (300 + video.CAPTION_HEIGHT, 300, 3)
        np.testing.assert_array_equal(frame, drawn)
    # Cells are 30 pixels: the paddle (channel 0, yellow) in the bottom row, bricks (channel 3, blue) in rows 1-3.
    first = frames[0]
    paddle, bricks = video.CHANNEL_COLOURS[0], video.CHANNEL_COLOURS[3]
    assert has_colour(first[270:300], paddle) and not has_colour(first[:270], paddle)
    assert has_colour(first[30:120], bricks) and not has_colour(first[120:300], bricks)


def test_gif_with_more_than_256_colours(tmp_path):
    """An env's own render may draw any colours: past 256, Pillow quantizes (each frame its own palette)."""
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (24, 32, 3), dtype=np.uint8) for _ in range(6)]
    path = tmp_path / "noise.gif"
    video.write_gif(path, iter(frames), [40.0] * 6)
    read, _ = gif_frames(path)
    assert len(read) == 6 and all(frame.shape == (24, 32, 3) for frame in read)


def refuse(monkeypatch):
    """Makes restoring a checkpoint fail the test: bad input must be refused before it."""
    from jaxdqn import checkpoint

    def restore(*args, **kwargs):
        raise AssertionError("a checkpoint was restored before the input was checked")

    monkeypatch.setattr(checkpoint, "load_policy", restore)


def assert_refused(code: int, out: str, err: str, folder: Path, *words: str) -> None:
    assert code == 2
    assert out == ""
    assert len(err.splitlines()) == 1 and err.startswith("jaxdqn.evaluate: error: "), err
    for word in words:
        assert word in err, err
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("args, words", [
    (["--env", "Taxi-v4"], ["Taxi-v4 cannot be drawn", "render(state, params)"]),  # a port without render
    (["--env", "FourRooms-misc"], ["FourRooms-misc cannot be drawn"]),  # gymnax's render makes a matplotlib figure
    (["--env", f"{__name__}:BadlyPaintedCartPole"], ["BadlyPaintedCartPole.render must return", "uint8", "float32"]),
    (["--video_episodes", "0"], ["--video_episodes must be positive"]),
    (["--video_max_frames", "-1"], ["--video_max_frames must be positive"]),
    (["--video_fps", "0"], ["--video_fps must be in (0, 100]"]),
    (["--out", "x.json"], ["--out and --episodes do not apply"]),
    (["--episodes", "3"], ["--out and --episodes do not apply"]),
    (["--video_episodes", "100000", "--video_max_frames", "100000"], ["GiB in memory"]),
])
def test_bad_input(capsys, monkeypatch, checkpoint, tmp_path, args, words):
    refuse(monkeypatch)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, out, err = run_evaluate(capsys, checkpoint, "--video", out_dir / "agent.gif", *args)
    assert_refused(code, out, err, out_dir, *words)


@pytest.mark.parametrize("name, words", [
    ("agent.avi", ["must end in .gif or .mp4", ".avi"]),
    ("missing/agent.gif", ["does not exist"]),
])
def test_bad_path(capsys, monkeypatch, checkpoint, tmp_path, name, words):
    refuse(monkeypatch)
    code, out, err = run_evaluate(capsys, checkpoint, "--video", tmp_path / name)
    assert_refused(code, out, err, tmp_path, *words)


@pytest.mark.skipif(HAS_MP4_ENCODER, reason="the MP4 encoder (the video extra) is installed")
def test_mp4_without_encoder(capsys, monkeypatch, checkpoint, tmp_path):
    refuse(monkeypatch)
    code, out, err = run_evaluate(capsys, checkpoint, "--video", tmp_path / "agent.mp4")
    assert_refused(code, out, err, tmp_path, "needs the video extra", 'pip install -e ".[video]"')


@pytest.mark.skipif(not HAS_MP4_ENCODER, reason="needs the video extra (imageio, imageio-ffmpeg)")
@pytest.mark.filterwarnings(r"ignore:os\.fork\(\) was called:RuntimeWarning")  # imageio reading: fork, then exec
def test_mp4(capsys, checkpoint, tmp_path):
    import imageio.v3 as iio

    path = tmp_path / "agent.mp4"
    code, out, err = run_evaluate(capsys, checkpoint, "--video", path, "--video_fps", 20)
    assert code == 0, err
    assert err == "" and len(out.splitlines()) == 1 and out.startswith(f"wrote {path}:")
    length = int(re.search(r"length (\d+)", out).group(1))
    frames = iio.imread(path)
    assert frames.shape == (length + 1 + 19, 300 + video.CAPTION_HEIGHT, 480, 3)  # + the held last frame, 1 s
    assert iio.immeta(path)["fps"] == 20
