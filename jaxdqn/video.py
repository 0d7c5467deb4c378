"""Watching a saved agent: greedy episodes drawn frame by frame into a GIF or an MP4.

`python -m jaxdqn.evaluate --load_model DIR --video agent.gif [--video_episodes N]` restores the agent's
greedy policy (`jaxdqn.load_policy`), plays N episodes of its environment as one jitted program that
keeps every state on the way (`rollout`), draws each state on the host and writes the file. Nothing
else is written (no eval.json).

What can be drawn (`find_renderer`, checked before the checkpoint's parameters are restored or the episodes
compiled):

- CartPole-v1, Acrobot-v1 and MountainCar-v0 (gymnax's classes and their subclasses), drawn from the
  state with numpy: a few filled shapes per frame (discs, thick segments, convex polygons), their edges
  smoothed in quarter steps only, so that a whole video holds a few dozen colours and a GIF needs no
  colour quantizing. gymnax's own visualiser is not used: for classic control it makes a Gymnasium
  environment for every frame and draws it with pygame (neither a jaxdqn dependency), and it draws
  MinAtar with matplotlib figures. Drawing with numpy needs neither and costs under a millisecond
  a frame, less than captioning and encoding it;
- grid games, whose observation is a grid of 0/1 cells (the five MinAtar games, Catch-bsuite,
  Pong-misc): each cell takes the colour of its lowest set channel (channel 0 is the player in every
  MinAtar game) and is upscaled to a square of pixels;
- any environment whose class (not gymnax's) defines `render(state, params) -> [H, W, 3] uint8`:
  a port in envs/ or a user's `package.module:Class`. It is called with the state's leaves as numpy
  arrays, once on a reset state before anything else to check what it returns.

Every frame gets a caption strip below it (environment, episode, step, return so far), which also
keeps two frames from ever being equal (a GIF writer would merge them). An episode shows its reset state
and the state after each step, so `length + 1` frames, at most `--video_max_frames` (a longer episode is
cut there and its return is the return so far); its last frame stays on screen for a second.

The episodes use `jaxdqn.agent.evaluate_greedy`'s keys and the steps of gymnax's `Environment.step`
without its automatic reset (so the final state can be drawn): `--video_episodes N --seed S` plays the
episodes `python -m jaxdqn.evaluate --episodes N --seed S` evaluates, with the same returns and lengths.

GIFs are written with Pillow (a dependency of matplotlib, declared by jaxdqn too); MP4s (H.264) with
imageio's ffmpeg plugin, the optional extra `pip install -e ".[video]"`. A GIF stores frame times in
hundredths of a second, so a frame rate that does not divide 100 plays slightly faster (30 fps: 33.3).
Bad input (an extension other than .gif/.mp4, a missing encoder, an env that cannot be drawn, an
unwritable path, non-positive counts, episodes whose states and GIF frames would take more than 4 GiB of host
memory) is a `ConfigError`, one line and exit code 2 from the CLI; the
file is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import math
import os
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxdqn.errors import ConfigError, one_line

# JAX, Pillow and the environments are imported where they are used: the checks of the flags come first.

FORMATS = (".gif", ".mp4")
VIDEO_EXTRA = 'pip install -e ".[video]"'  # what installs the MP4 encoder (imageio with ffmpeg)
DEFAULT_FPS = 25.0  # drawn scenes (classic control, an env's own render); 40 ms, a whole GIF time unit
GRID_FPS = 10.0  # grid games move a cell per step: slower to follow
DEFAULT_MAX_FRAMES = 2000  # per episode: every classic-control and MinAtar episode but Freeway's 2,500 steps
HOLD_SECONDS = 1.0  # how long the last frame of an episode stays
MAX_FPS = 100.0  # a GIF's finest frame time is 10 ms
MAX_HOST_BYTES = 4 * 2**30  # the states, observations and (for a GIF) frames a video may hold in memory
CAPTION_HEIGHT = 20

# Colours (RGB).
WHITE = (255, 255, 255)
CAPTION_BACKGROUND, CAPTION_TEXT = (28, 30, 38), (235, 235, 235)
GRID_BACKGROUND, GRID_LINES = (16, 18, 32), (34, 38, 58)
# A grid game's channels: channel 0 (the player in every MinAtar game) first, then distinct hues.
CHANNEL_COLOURS = (
    (255, 214, 10),   # yellow
    (239, 71, 111),   # pink-red
    (6, 214, 160),    # teal
    (60, 140, 230),   # blue
    (255, 140, 66),   # orange
    (180, 120, 255),  # violet
    (140, 220, 255),  # sky
    (200, 200, 200),  # light grey
    (150, 100, 60),   # brown
    (255, 255, 255),  # white
)


# Drawing primitives: filled shapes on an [H, W, 3] uint8 image, in pixel coordinates (x right, y down) -------
#
# Edges are smoothed by the share of a pixel a shape covers, estimated from the distance of the pixel's centre
# to the edge and rounded to quarters, so that a scene keeps a few dozen colours (a GIF holds 256).

EDGE_LEVELS = 4


def _box(image: np.ndarray, x0: float, y0: float, x1: float, y1: float):
    """The pixel rows and columns of the box [x0, x1] x [y0, y1] inside the image (one pixel wider each side
    for the smoothed edge), and their centres' coordinates."""
    height, width = image.shape[:2]
    left, right = max(int(math.floor(x0)) - 1, 0), min(int(math.ceil(x1)) + 2, width)
    top, bottom = max(int(math.floor(y0)) - 1, 0), min(int(math.ceil(y1)) + 2, height)
    if left >= right or top >= bottom:
        return None
    xs = np.arange(left, right, dtype=np.float32)[None, :] + 0.5
    ys = np.arange(top, bottom, dtype=np.float32)[:, None] + 0.5
    return (slice(top, bottom), slice(left, right)), xs, ys


def _paint(image: np.ndarray, where, inside: np.ndarray, colour) -> None:
    """Blends `colour` into `image[where]` by `inside`, the signed distance (pixels) of each pixel's centre
    to the shape's edge, positive inside: a pixel half a pixel or more inside is covered."""
    coverage = np.round(np.clip(inside + 0.5, 0.0, 1.0) * EDGE_LEVELS)
    region = image[where]
    full, part = coverage == EDGE_LEVELS, (coverage > 0) & (coverage < EDGE_LEVELS)
    region[full] = colour
    if part.any():
        share = (coverage[part] / EDGE_LEVELS)[:, None]
        region[part] = np.round(region[part] * (1.0 - share) + np.asarray(colour, np.float32) * share).astype(np.uint8)


def fill_rect(image: np.ndarray, x0: float, y0: float, x1: float, y1: float, colour) -> None:
    """Fills the axis-aligned rectangle whose corners are (x0, y0) and (x1, y1), its edges on whole pixels."""
    height, width = image.shape[:2]
    left, right = max(int(round(min(x0, x1))), 0), min(int(round(max(x0, x1))), width)
    top, bottom = max(int(round(min(y0, y1))), 0), min(int(round(max(y0, y1))), height)
    if left < right and top < bottom:
        image[top:bottom, left:right] = colour


def fill_disc(image: np.ndarray, cx: float, cy: float, radius: float, colour) -> None:
    box = _box(image, cx - radius, cy - radius, cx + radius, cy + radius)
    if box is not None:
        where, xs, ys = box
        _paint(image, where, radius - np.sqrt((xs - cx) ** 2 + (ys - cy) ** 2), colour)


def fill_segment(image: np.ndarray, start: Sequence[float], end: Sequence[float], radius: float, colour) -> None:
    """Fills the points within `radius` of the segment from `start` to `end` (a bar with round ends)."""
    (x0, y0), (x1, y1) = start, end
    box = _box(image, min(x0, x1) - radius, min(y0, y1) - radius, max(x0, x1) + radius, max(y0, y1) + radius)
    if box is None:
        return
    where, xs, ys = box
    dx, dy = x1 - x0, y1 - y0
    squared = dx * dx + dy * dy
    along = np.clip(((xs - x0) * dx + (ys - y0) * dy) / squared, 0.0, 1.0) if squared > 0 else np.zeros_like(xs)
    _paint(image, where, radius - np.sqrt((xs - x0 - along * dx) ** 2 + (ys - y0 - along * dy) ** 2), colour)


def fill_polygon(image: np.ndarray, points: Sequence[Sequence[float]], colour) -> None:
    """Fills a convex polygon (its corners in either winding order)."""
    points = np.asarray(points, np.float32)
    box = _box(image, *points.min(axis=0), *points.max(axis=0))
    if box is None:
        return
    where, xs, ys = box
    nxt = np.roll(points, -1, axis=0)
    winding = math.copysign(1.0, float(np.sum(points[:, 0] * nxt[:, 1] - nxt[:, 0] * points[:, 1])))  # area's sign
    inside = np.full(np.broadcast_shapes(xs.shape, ys.shape), np.inf, np.float32)
    for (ax, ay), (bx, by) in zip(points, nxt):
        length = math.hypot(bx - ax, by - ay)
        if length > 0:  # the signed distance to the edge's line, positive on the polygon's side
            inside = np.minimum(inside, winding * ((bx - ax) * (ys - ay) - (by - ay) * (xs - ax)) / length)
    _paint(image, where, inside, colour)


def _canvas(width: int, height: int, colour) -> np.ndarray:
    image = np.empty((height, width, 3), np.uint8)
    image[:] = colour
    return image


def _scalar(value) -> float:
    return float(np.asarray(value))


# Scenes: one per environment family; `draw(state, obs)` returns a frame -------------------------------------

class CartPoleScene:
    """The cart on its track (the ends of the track are where the episode terminates), the pole on its pivot."""

    width, height = 480, 300
    margin = 0.45  # metres shown beyond each end of the track, so that a cart at the limit is whole

    def __init__(self, params):
        self.limit = _scalar(params.x_threshold)
        self.pole = 2.0 * _scalar(params.length)  # params.length is half the pole
        self.scale = self.width / (2.0 * (self.limit + self.margin))  # pixels per metre
        self.track_y = 220
        self.background = _canvas(self.width, self.height, WHITE)
        fill_rect(self.background, 0, self.track_y, self.width, self.track_y + 2, (90, 90, 90))
        for end in (-self.limit, self.limit):  # the termination limits
            x = self.to_x(end)
            fill_rect(self.background, x - 1.5, self.track_y - 12, x + 1.5, self.track_y + 12, (220, 60, 60))

    def to_x(self, metres: float) -> float:
        return self.width / 2 + metres * self.scale

    def draw(self, state, obs) -> np.ndarray:
        image = self.background.copy()
        x, theta = self.to_x(_scalar(state.x)), _scalar(state.theta)
        cart_w, cart_h, wheel = 0.5 * self.scale, 0.28 * self.scale, 0.06 * self.scale
        bottom = self.track_y - wheel
        fill_rect(image, x - cart_w / 2, bottom - cart_h, x + cart_w / 2, bottom, (40, 52, 70))
        for side in (-1, 1):
            fill_disc(image, x + side * cart_w / 3, bottom + 0.2 * wheel, wheel, (20, 20, 20))
        pivot = (x, bottom - cart_h + 0.05 * self.scale)
        length = self.pole * self.scale
        tip = (pivot[0] + length * math.sin(theta), pivot[1] - length * math.cos(theta))
        fill_segment(image, pivot, tip, 0.045 * self.scale, (214, 140, 60))
        fill_disc(image, *pivot, 0.05 * self.scale, (150, 155, 175))
        return image


class AcrobotScene:
    """Two links hanging from a fixed pivot; the episode ends when the tip rises above the dashed line."""

    width = height = 320

    def __init__(self, params):
        self.l1, self.l2 = _scalar(params.link_length_1), _scalar(params.link_length_2)
        reach = self.l1 + self.l2
        self.scale = self.width / (2.0 * reach + 0.6)
        self.centre = (self.width / 2, self.height / 2)
        self.background = _canvas(self.width, self.height, WHITE)
        goal_y = self.to_pixel(0.0, 1.0)[1]  # gymnax's goal: the tip higher than 1 above the pivot
        for x in range(0, self.width, 16):
            fill_rect(self.background, x, goal_y - 1, x + 9, goal_y + 1, (120, 120, 120))

    def to_pixel(self, x: float, y: float) -> tuple[float, float]:
        return self.centre[0] + x * self.scale, self.centre[1] - y * self.scale

    def draw(self, state, obs) -> np.ndarray:
        image = self.background.copy()
        a1, a2 = _scalar(state.joint_angle1), _scalar(state.joint_angle2)
        elbow = (self.l1 * math.sin(a1), -self.l1 * math.cos(a1))  # angles 0: both links hang straight down
        tip = (elbow[0] + self.l2 * math.sin(a1 + a2), elbow[1] - self.l2 * math.cos(a1 + a2))
        pivot, elbow, tip = self.to_pixel(0.0, 0.0), self.to_pixel(*elbow), self.to_pixel(*tip)
        radius = 0.09 * self.scale
        fill_segment(image, pivot, elbow, radius, (0, 150, 160))
        fill_segment(image, elbow, tip, radius, (0, 150, 160))
        for joint in (pivot, elbow):
            fill_disc(image, *joint, radius * 0.75, (230, 190, 40))
        return image


class MountainCarScene:
    """The hill y = 0.45 sin(3x) + 0.55, the flag at the goal, the car on the slope."""

    width, height = 480, 320

    def __init__(self, params):
        self.low, self.high = _scalar(params.min_position), _scalar(params.max_position)
        self.goal = _scalar(params.goal_position)
        self.scale = self.width / (self.high - self.low)
        self.base = self.height - 8  # pixel row of height 0: the flag on the highest point stays in the frame
        self.background = _canvas(self.width, self.height, (235, 243, 250))
        columns = self.low + (np.arange(self.width) + 0.5) / self.scale
        surface = self.to_y(self.hill(columns))
        rows = np.arange(self.height)[:, None] + 0.5
        self.background[rows >= surface[None, :]] = (120, 160, 90)
        self.background[np.abs(rows - surface[None, :]) < 1.5] = (60, 90, 50)
        foot = (self.to_x(self.goal), self.to_y(self.hill(self.goal)))
        top = (foot[0], foot[1] - 0.12 * self.scale)
        fill_segment(self.background, foot, top, 1.2, (70, 70, 70))
        fill_polygon(self.background, [top, (top[0] + 0.07 * self.scale, top[1] + 0.02 * self.scale),
                                       (top[0], top[1] + 0.04 * self.scale)], (230, 200, 20))

    @staticmethod
    def hill(x):
        return 0.45 * np.sin(3.0 * x) + 0.55

    def to_x(self, position: float) -> float:
        return (position - self.low) * self.scale

    def to_y(self, height):
        return self.base - height * self.scale

    def draw(self, state, obs) -> np.ndarray:
        image = self.background.copy()
        position = _scalar(state.position)
        angle = math.atan(1.35 * math.cos(3.0 * position))  # the slope's angle, d(hill)/dx = 1.35 cos(3x)
        along = np.array([math.cos(angle), -math.sin(angle)])  # pixel axes (y down)
        up = np.array([-math.sin(angle), -math.cos(angle)])
        ground = np.array([self.to_x(position), float(self.to_y(self.hill(position)))])
        length, height, wheel = 0.12 * self.scale, 0.05 * self.scale, 0.018 * self.scale
        bottom = ground + up * wheel * 1.6
        corners = [bottom - along * length / 2, bottom + along * length / 2,
                   bottom + along * length / 2 + up * height, bottom - along * length / 2 + up * height]
        fill_polygon(image, corners, (50, 50, 60))
        roof = [bottom - along * length / 5 + up * height, bottom + along * length / 4 + up * height,
                bottom + along * length / 6 + up * height * 1.7, bottom - along * length / 8 + up * height * 1.7]
        fill_polygon(image, roof, (50, 50, 60))
        for side in (-1, 1):
            fill_disc(image, *(bottom + along * side * length / 3 - up * wheel * 0.3), wheel, (20, 20, 20))
        return image


class GridScene:
    """An observation of 0/1 cells ([H, W] or [H, W, C]): each cell coloured by its lowest set channel."""

    def __init__(self, obs_shape: Sequence[int]):
        self.rows, self.columns = obs_shape[:2]
        self.channels = obs_shape[2] if len(obs_shape) == 3 else 1
        self.cell = max(4, 300 // max(self.rows, self.columns))
        self.width, self.height = self.columns * self.cell, self.rows * self.cell
        colours = [GRID_BACKGROUND] + [CHANNEL_COLOURS[c % len(CHANNEL_COLOURS)] for c in range(self.channels)]
        # One tile per colour, [channels + 1, cell, cell, 3], with a one-pixel line along its top and left
        # edges: lighter than the background on an empty cell, a dark gap between full ones.
        self.tiles = np.broadcast_to(np.array(colours, np.uint8)[:, None, None, :],
                                     (len(colours), self.cell, self.cell, 3)).copy()
        self.tiles[:, 0, :] = self.tiles[:, :, 0] = GRID_BACKGROUND
        self.tiles[0, 0, :] = self.tiles[0, :, 0] = GRID_LINES

    def draw(self, state, obs) -> np.ndarray:
        cells = np.asarray(obs).reshape(self.rows, self.columns, self.channels) > 0.5
        # The lowest set channel + 1 (0: empty): argmax finds the first True.
        index = np.where(cells.any(axis=-1), np.argmax(cells, axis=-1) + 1, 0)
        tiles = self.tiles[index]  # [rows, columns, cell, cell, 3]
        return tiles.transpose(0, 2, 1, 3, 4).reshape(self.height, self.width, 3)


class OwnRender:
    """An environment's own `render(state, params)`, its frames checked to be [H, W, 3] uint8 of one size."""

    def __init__(self, env, params):
        self.env, self.params, self.shape = env, params, None

    def draw(self, state, obs) -> np.ndarray:
        name = f"{type(self.env).__name__}.render"
        try:
            frame = np.asarray(self.env.render(state, self.params))
        except Exception as error:  # noqa: BLE001  (a user's code may raise anything)
            raise ConfigError(f"{name} failed: {type(error).__name__}: {one_line(error)[:200]}") from None
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8 or 0 in frame.shape:
            raise ConfigError(f"{name} must return an [H, W, 3] uint8 frame, returned {frame.dtype} {frame.shape}")
        if self.shape is None:
            self.shape = frame.shape
        elif frame.shape != self.shape:
            raise ConfigError(f"{name} returned frames of two sizes, {self.shape} and {frame.shape}")
        return frame


@dataclasses.dataclass(frozen=True)
class Renderer:
    """How an environment's frames are drawn: `scene.draw(state, obs) -> [H, W, 3] uint8`."""

    scene: Any
    fps: float  # the default frame rate


GRID_GAMES = ("Catch-bsuite", "Pong-misc")  # besides the MinAtar games
SUPPORTED = "CartPole-v1, Acrobot-v1, MountainCar-v0, the MinAtar games, " + ", ".join(GRID_GAMES)


def _own_render(env) -> bool:
    """Whether the env's class defines `render` outside gymnax (gymnax's own render methods draw with
    matplotlib into a figure, not a frame)."""
    method = getattr(type(env), "render", None)
    return callable(method) and not (getattr(method, "__module__", None) or "").startswith("gymnax")


def find_renderer(env, env_params) -> Renderer | None:
    """The renderer for `env`, or None if it cannot be drawn (see the module docstring for the order)."""
    from gymnax.environments.classic_control import acrobot, cartpole, mountain_car
    from gymnax.environments.minatar import asterix, breakout, freeway, seaquest, space_invaders

    if _own_render(env):
        return Renderer(OwnRender(env, env_params), DEFAULT_FPS)
    if isinstance(env, cartpole.CartPole):
        return Renderer(CartPoleScene(env_params), DEFAULT_FPS)
    if isinstance(env, acrobot.Acrobot):
        return Renderer(AcrobotScene(env_params), DEFAULT_FPS)
    if isinstance(env, mountain_car.MountainCar):
        return Renderer(MountainCarScene(env_params), DEFAULT_FPS)
    minatar = (asterix.MinAsterix, breakout.MinBreakout, freeway.MinFreeway, seaquest.MinSeaquest,
               space_invaders.MinSpaceInvaders)
    if isinstance(env, minatar) or type(env).__module__.startswith("gymnax") and env.name in GRID_GAMES:
        shape = tuple(env.observation_space(env_params).shape)
        if len(shape) in (2, 3):
            return Renderer(GridScene(shape), GRID_FPS)
    return None


# Options and checks ---------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class VideoOptions:
    """What `--video` and its flags ask for.

    Attributes:
      path: the file to write; its extension picks the format (.gif, .mp4).
      episodes: greedy episodes, one after another in the file.
      fps: frames per second; None: the renderer's default (25, or 10 for grid games).
      max_frames: frames per episode at most (the reset state counts); a longer episode is cut.
      seed: seed of the episodes' resets and dynamics (as `jaxdqn.evaluate`'s --seed).
    """

    path: Path
    episodes: int = 1
    fps: float | None = None
    max_frames: int = DEFAULT_MAX_FRAMES
    seed: int = 0

    def validate(self) -> "VideoOptions":
        from jaxdqn.config import INT32_MAX, INT32_MIN

        suffix = self.path.suffix.lower()
        if suffix not in FORMATS:
            raise ConfigError(f"--video {self.path}: the file must end in .gif or .mp4 (the format), not "
                              f"{suffix or 'nothing'}")
        if self.episodes <= 0:
            raise ConfigError(f"--video_episodes must be positive, got {self.episodes}")
        if self.max_frames <= 0:
            raise ConfigError(f"--video_max_frames must be positive, got {self.max_frames}")
        if self.fps is not None and not (0 < self.fps <= MAX_FPS):  # also refuses NaN
            raise ConfigError(f"--video_fps must be in (0, {MAX_FPS:g}], got {self.fps}")
        if not INT32_MIN <= self.seed <= INT32_MAX:
            raise ConfigError(f"--seed must be between {INT32_MIN} and {INT32_MAX} (int32), got {self.seed}")
        if suffix == ".mp4":
            check_mp4_encoder()
        return self


def check_mp4_encoder() -> None:
    """Raises ConfigError unless imageio and its ffmpeg plugin (the `video` extra) are installed."""
    missing = [name for name in ("imageio", "imageio_ffmpeg") if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"--video .mp4 needs the video extra ({', '.join(missing)} not installed): "
                          f"{VIDEO_EXTRA}, or write a .gif")
    import imageio_ffmpeg

    try:
        imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError as error:
        raise ConfigError(f"--video .mp4: imageio-ffmpeg finds no ffmpeg ({one_line(error)[:200]})") from None


def renderer_for(env_name: str) -> tuple[Renderer, str, Any, Any]:
    """Builds the env `env_name` and its renderer, checking an env's own `render` on a reset state.

    Returns:
      `(renderer, registered name, env, env_params)`.

    Raises:
      ConfigError: the env cannot be built or drawn, or its `render` returns no [H, W, 3] uint8 frame.
    """
    import jax

    from jaxdqn.registry import make_env

    spec, env, env_params = make_env(env_name)
    renderer = find_renderer(env, env_params)
    if renderer is None:
        raise ConfigError(f"--video: {spec.name} cannot be drawn: jaxdqn draws {SUPPORTED}, and an env whose class "
                          f"defines render(state, params) returning an [H, W, 3] uint8 frame")
    if isinstance(renderer.scene, OwnRender):
        obs, state = jax.device_get(env.reset(jax.random.key(0), env_params))
        renderer.scene.draw(state, obs)
    return renderer, spec.name, env, env_params


def _tree_bytes(tree) -> int:
    import jax

    return sum(int(np.prod(leaf.shape)) * np.dtype(leaf.dtype).itemsize for leaf in jax.tree.leaves(tree))


def check_memory(env, env_params, renderer: Renderer, options: VideoOptions) -> None:
    """Refuses a video whose states and frames would not fit in `MAX_HOST_BYTES` of host memory (a GIF's
    frames are all held until it is written; an MP4's are streamed)."""
    import jax

    obs, state = jax.eval_shape(env.reset, jax.random.key(0), env_params)
    per_frame = _tree_bytes((obs, state)) + 4  # and the step's float32 reward
    if options.path.suffix.lower() == ".gif":
        width, height = _frame_size(renderer)
        per_frame += 2 * width * (height + CAPTION_HEIGHT)  # a byte a pixel once paletted, and Pillow's copy
    frames = frames_bound(env, env_params, options.max_frames)
    total = per_frame * options.episodes * frames
    if total > MAX_HOST_BYTES:
        raise ConfigError(f"--video_episodes {options.episodes} of up to {frames:,} frames (--video_max_frames "
                          f"{options.max_frames:,}) would hold about {total / 2**30:.1f} GiB in memory, more than "
                          f"{MAX_HOST_BYTES / 2**30:.0f} GiB; lower them")


def frames_bound(env, env_params, max_frames: int) -> int:
    """The most frames an episode can have: `max_frames`, or fewer where gymnax's own truncation (after
    `params.max_steps_in_episode` steps, unless the env redefines `is_truncated`) ends every episode sooner."""
    from gymnax.environments.environment import Environment

    if type(env).is_truncated is not Environment.is_truncated:
        return max_frames
    try:
        return min(max_frames, int(np.ceil(float(np.asarray(env_params.max_steps_in_episode)))) + 1)
    except (AttributeError, TypeError, ValueError, OverflowError):
        return max_frames


def _frame_size(renderer: Renderer) -> tuple[int, int]:
    scene = renderer.scene
    if isinstance(scene, OwnRender):
        return scene.shape[1], scene.shape[0]
    return scene.width, scene.height


# Rolling out -------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Episode:
    """One greedy episode as the host draws it: `length + 1` states and observations (the reset state,
    then the state after each step), the reward of each step, and whether it ended before the frame cap."""

    states: Any  # the env state's pytree, each leaf [length + 1, ...] (numpy)
    observations: Any  # likewise
    rewards: np.ndarray  # [length]
    ended: bool

    @property
    def length(self) -> int:
        return int(self.rewards.size)

    @property
    def episode_return(self) -> float:
        return float(self.rewards.sum())

    def frame(self, t: int):
        import jax

        return jax.tree.map(lambda leaf: leaf[t], self.states), jax.tree.map(lambda leaf: leaf[t], self.observations)


def rollout(env, env_params, policy, key, num_episodes: int, max_frames: int):
    """Plays `num_episodes` episodes of `policy` (`jaxdqn.load_policy`'s greedy policy: observations
    `[batch, ...]` -> actions `[batch]`) in parallel for up to `max_frames - 1` steps, keeping every state.

    The keys are `jaxdqn.agent.evaluate_greedy`'s, and a step is gymnax's `Environment.step` (which splits
    its key and steps with the first half) without the automatic reset, so that the final state is kept; an
    episode that has ended stays in its final state.

    Returns:
      `(states, observations, rewards, lengths, ended)`: states and observations with leaves
      `[max_frames, num_episodes, ...]` (index t: after t steps), rewards `[max_frames, num_episodes]`
      (index t: of step t; row 0 is zero), lengths `[num_episodes]` (steps played) and ended
      `[num_episodes]` (the episode terminated or was truncated within the cap).
    """
    import jax
    import jax.numpy as jnp

    reset_key, key = jax.random.split(key)
    obs, state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(reset_key, num_episodes), env_params)

    def history(leaf):
        return jnp.zeros((max_frames, *leaf.shape), leaf.dtype).at[0].set(leaf)

    def step_one(step_key, state, action):
        step_key, _ = jax.random.split(step_key)  # as Environment.step, whose second half would reset
        obs, next_state, reward, terminated, _ = env.step_env(step_key, state, action, env_params)
        return obs, next_state, reward, terminated | env.is_truncated(next_state, env_params)

    def not_finished(carry):
        t, finished = carry[0], carry[-2]
        return (t < max_frames) & ~jnp.all(finished)

    def step(carry):
        t, obs, state, states, observations, rewards, lengths, finished, key = carry
        key, step_key = jax.random.split(key)
        action = policy(obs)
        next_obs, next_state, reward, done = jax.vmap(step_one)(
            jax.random.split(step_key, num_episodes), state, action)

        def keep(new, old):  # an ended episode stays as it ended
            return jnp.where(finished.reshape(finished.shape + (1,) * (new.ndim - 1)), old, new)

        obs, state = jax.tree.map(keep, next_obs, obs), jax.tree.map(keep, next_state, state)
        states = jax.tree.map(lambda history, leaf: history.at[t].set(leaf), states, state)
        observations = jax.tree.map(lambda history, leaf: history.at[t].set(leaf), observations, obs)
        rewards = rewards.at[t].set(jnp.where(finished, 0.0, reward.astype(jnp.float32)))
        lengths = lengths + (~finished).astype(jnp.int32)
        return t + 1, obs, state, states, observations, rewards, lengths, finished | done, key

    carry = (jnp.int32(1), obs, state, jax.tree.map(history, state), jax.tree.map(history, obs),
             jnp.zeros((max_frames, num_episodes), jnp.float32), jnp.zeros(num_episodes, jnp.int32),
             jnp.zeros(num_episodes, jnp.bool_), key)
    _, _, _, states, observations, rewards, lengths, ended, _ = jax.lax.while_loop(not_finished, step, carry)
    return states, observations, rewards, lengths, ended


def play(env, env_params, policy, options: VideoOptions) -> list[Episode]:
    """Plays the episodes of `policy` (see `rollout`) and cuts them at their ends, as numpy arrays."""
    import jax

    run = jax.jit(rollout, static_argnums=(0, 2, 4, 5))
    max_frames = frames_bound(env, env_params, options.max_frames)  # no room kept for steps past the time limit
    states, observations, rewards, lengths, ended = jax.device_get(run(
        env, env_params, policy, jax.random.key(options.seed), options.episodes, max_frames))
    episodes = []
    for e, (length, done) in enumerate(zip(lengths.tolist(), ended.tolist())):
        def cut(leaf, e=e, length=length):
            return np.asarray(leaf[: length + 1, e])

        episodes.append(Episode(jax.tree.map(cut, states), jax.tree.map(cut, observations),
                                rewards[1 : length + 1, e], bool(done)))
    return episodes


# Frames and files --------------------------------------------------------------------------------------

class Captions:
    """Caption strips `[CAPTION_HEIGHT, width, 3]` uint8: light text on a dark strip, in Pillow's default font.

    Each character is drawn once with Pillow and kept; a caption is its characters' masks placed at their
    advances (no kerning), a few array operations instead of a text layout per frame. The smoothed edges are
    rounded to quarters, like the scenes' (a few colours, not 256 greys).
    """

    def __init__(self, width: int):
        from PIL import ImageFont

        try:
            self.font = ImageFont.load_default(size=12)  # FreeType's, when Pillow has it
        except (TypeError, ImportError, OSError):
            self.font = ImageFont.load_default()
        self.width = width
        self.glyphs: dict[str, tuple[np.ndarray, float]] = {}
        share = np.arange(EDGE_LEVELS + 1, dtype=np.float32)[:, None] / EDGE_LEVELS
        self.colours = np.round(np.asarray(CAPTION_BACKGROUND, np.float32) * (1.0 - share)
                                + np.asarray(CAPTION_TEXT, np.float32) * share).astype(np.uint8)

    def _glyph(self, char: str) -> tuple[np.ndarray, float]:
        """A character's coverage in levels 0..EDGE_LEVELS, `[CAPTION_HEIGHT, w]` uint8, and its advance."""
        if char not in self.glyphs:
            from PIL import Image, ImageDraw

            advance = float(self.font.getlength(char))
            mask = Image.new("L", (int(math.ceil(advance)) + 4, CAPTION_HEIGHT), 0)  # room for an overhang
            ImageDraw.Draw(mask).text((0, 3), char, fill=255, font=self.font)
            levels = np.round(np.asarray(mask, np.float32) * (EDGE_LEVELS / 255.0)).astype(np.uint8)
            self.glyphs[char] = (levels, advance)
        return self.glyphs[char]

    def length(self, text: str) -> float:
        return sum(self._glyph(char)[1] for char in text)

    def strip(self, text: str) -> np.ndarray:
        levels = np.zeros((CAPTION_HEIGHT, self.width + 8), np.uint8)
        x = 4.0
        for char in text:
            mask, advance = self._glyph(char)
            left = int(round(x))
            if left >= self.width:
                break
            region = levels[:, left: left + mask.shape[1]]
            np.maximum(region, mask[:, : region.shape[1]], out=region)
            x += advance
        return self.colours[levels[:, : self.width]]


def frames(renderer: Renderer, episodes: Sequence[Episode], env_name: str) -> Iterator[np.ndarray]:
    """Every frame of every episode, in order, each with its caption strip: `[H + CAPTION_HEIGHT, W, 3]` uint8."""
    captions = None
    for number, episode in enumerate(episodes, 1):
        returns = np.concatenate([[0.0], np.cumsum(episode.rewards, dtype=np.float64)])
        for t in range(episode.length + 1):
            frame = renderer.scene.draw(*episode.frame(t))
            captions = captions or Captions(frame.shape[1])
            caption = f"step {t}  return {returns[t]:g}"
            if len(episodes) > 1:
                caption = f"episode {number}/{len(episodes)}  {caption}"
            if captions.length(f"{env_name}  {caption}") <= frame.shape[1] - 8:
                caption = f"{env_name}  {caption}"
            yield np.concatenate([frame, captions.strip(caption)], axis=0)


def frame_counts(episodes: Sequence[Episode]) -> list[int]:
    return [episode.length + 1 for episode in episodes]


def durations_ms(episodes: Sequence[Episode], fps: float) -> list[float]:
    """Each frame's time on screen: 1/fps, and `HOLD_SECONDS` for the last frame of an episode."""
    durations = []
    for count in frame_counts(episodes):
        durations += [1000.0 / fps] * (count - 1) + [max(1000.0 / fps, 1000.0 * HOLD_SECONDS)]
    return durations


class ExactPalette:
    """Maps RGB frames onto one palette of at most 256 colours, exactly (no quantizing), the colours indexed as
    they appear: a look-up table over all 2**24 colours (32 MiB), so that a frame costs one array look-up."""

    UNKNOWN = 0xFFFF

    def __init__(self):
        self.index = np.full(2**24, self.UNKNOWN, np.uint16)
        self.flat = np.zeros((256, 3), np.uint8)
        self.size = 0
        self.bytes = np.zeros(0, np.uint8)  # a frame's bytes and one more

    def indices(self, frame: np.ndarray) -> np.ndarray | None:
        """`frame`'s palette indices `[H, W]` (uint8), or None if its colours would take the palette past 256."""
        pixels = frame.shape[0] * frame.shape[1]
        if self.bytes.size != 3 * pixels + 1:
            self.bytes = np.zeros(3 * pixels + 1, np.uint8)
        self.bytes[:-1] = frame.reshape(-1)
        # Each pixel's 3 bytes and the next one as a little-endian uint32, the fourth byte masked off:
        # r + 256 g + 65536 b, read in place (a stride of 3 bytes) rather than assembled channel by channel.
        words = np.ndarray((pixels,), "<u4", buffer=self.bytes, strides=(3,))
        packed = (words & 0xFFFFFF).reshape(frame.shape[:2])
        indices = self.index[packed]
        unknown = indices == self.UNKNOWN
        if unknown.any():
            new = np.unique(packed[unknown])
            if self.size + new.size > 256:
                return None
            self.index[new] = np.arange(self.size, self.size + new.size)
            self.flat[self.size: self.size + new.size] = np.stack([new & 255, (new >> 8) & 255, new >> 16], axis=1)
            self.size += new.size
            indices = self.index[packed]
        return indices.astype(np.uint8)

    def image(self, indices: np.ndarray, image_module):
        """A Pillow "P" image of `indices` with the whole palette (every frame the same one: a GIF's global table)."""
        image = image_module.fromarray(indices)  # mode "L" until it gets its palette
        image.putpalette(self.flat.tobytes())
        return image


def write_gif(path: Path, frames: Iterator[np.ndarray], durations: Sequence[float]) -> None:
    """Writes a looping GIF. Frames of at most 256 colours in all (jaxdqn's scenes) share one exact palette;
    from the frame that brings more (an env's own render), Pillow quantizes each frame to its own."""
    from PIL import Image

    palette = ExactPalette()
    images: list[Any] = []  # palette indices while the colours fit, then Pillow images
    exact = True
    for frame in frames:
        indices = palette.indices(frame) if exact else None
        if indices is not None:
            images.append(indices)
            continue
        if exact:
            exact = False
            images = [palette.image(indices, Image) for indices in images]
        images.append(Image.fromarray(frame).quantize(256, dither=Image.Dither.NONE))
    if exact:
        images = [palette.image(indices, Image) for indices in images]
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=list(durations), loop=0,
                   optimize=False)


def write_mp4(path: Path, frames: Iterator[np.ndarray], episodes: Sequence[Episode], fps: float) -> None:
    """Writes an H.264 MP4 (imageio's ffmpeg plugin), frames padded to even sizes (yuv420p needs them); the
    last frame of an episode is repeated to stay `HOLD_SECONDS`."""
    import imageio.v2 as imageio

    hold = max(0, round(HOLD_SECONDS * fps) - 1)
    last = set(np.cumsum(frame_counts(episodes)) - 1)
    with warnings.catch_warnings():
        # The writer starts ffmpeg with subprocess, which forks and at once executes ffmpeg in the child; JAX
        # warns of any fork in a process where it runs threads, which does not apply to a fork that only execs.
        warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
        writer = imageio.get_writer(path, format="FFMPEG", mode="I", fps=fps, codec="libx264", quality=8,
                                    pixelformat="yuv420p", macro_block_size=1, ffmpeg_log_level="error")
        try:
            for index, frame in enumerate(frames):
                height, width = frame.shape[:2]
                if height % 2 or width % 2:
                    frame = np.pad(frame, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
                for _ in range(1 + (hold if index in last else 0)):
                    writer.append_data(frame)
        finally:
            writer.close()


def write(path: Path, renderer: Renderer, episodes: Sequence[Episode], env_name: str, fps: float) -> None:
    """Draws the episodes into `path` (its format by extension), written under a temporary name and renamed."""
    temporary = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        if path.suffix.lower() == ".gif":
            write_gif(temporary, frames(renderer, episodes, env_name), durations_ms(episodes, fps))
        else:
            write_mp4(temporary, frames(renderer, episodes, env_name), episodes, fps)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


# The command ------------------------------------------------------------------------------------------

def summary_line(path: Path, env_name: str, episodes: Sequence[Episode], frames_written: int, fps: float,
                 size: tuple[int, int], seconds: float) -> str:
    returns = [episode.episode_return for episode in episodes]
    if len(returns) == 1:
        played = f"1 greedy episode of {env_name}, return {returns[0]:g}, length {episodes[0].length}"
    else:
        played = (f"{len(returns)} greedy episodes of {env_name}, returns {', '.join(f'{r:g}' for r in returns[:8])}"
                  f"{', ...' if len(returns) > 8 else ''} (mean {np.mean(returns):.1f})")
    cut = [number for number, episode in enumerate(episodes, 1) if not episode.ended]
    if cut:
        played += f"; episode{'s' if len(cut) > 1 else ''} {', '.join(map(str, cut))} cut at the frame cap"
    return (f"wrote {path}: {played}; {frames_written} frames of {size[0]}x{size[1]} at {fps:g} fps "
            f"({seconds:.1f}s)")


def main(args: argparse.Namespace, checkpoint) -> int:
    """`python -m jaxdqn.evaluate ... --video FILE`: checks, restores, plays, draws, writes; prints one line.

    Args:
      args: `jaxdqn.evaluate`'s parsed flags (load_model, load_step, env, seed, compile cache, video flags).
      checkpoint: the `jaxdqn.checkpoint.Checkpoint` found for `--load_model` / `--load_step`.

    Returns:
      0, or 1 when the file could not be written (a full disk).

    Raises:
      ConfigError: bad input (see the module docstring), before the checkpoint's parameters are restored or the
        episodes compiled (a network that does not fit the env: by `load_policy`, before it restores them).
    """
    from jaxdqn import preflight
    from jaxdqn.checkpoint import load_policy
    from jaxdqn.train import DEFAULT_COMPILE_CACHE, enable_compile_cache

    if args.out is not None or args.episodes is not None:
        raise ConfigError("--video plays greedy episodes into a video instead of evaluating: --out and --episodes "
                          "do not apply (--video_episodes sets how many)")
    options = VideoOptions(Path(args.video), args.video_episodes, args.video_fps, args.video_max_frames,
                           args.seed).validate()
    preflight.check_output_file(options.path, "--video")
    renderer, env_name, env, env_params = renderer_for(args.env or checkpoint.config.env)
    check_memory(env, env_params, renderer, options)
    fps = options.fps or renderer.fps
    enable_compile_cache(None if args.no_compile_cache else (args.compile_cache or DEFAULT_COMPILE_CACHE))
    start = time.time()
    policy, _ = load_policy(args.load_model, args.load_step, args.env)  # checks that the network fits the env
    episodes = play(env, env_params, policy, options)
    try:
        write(options.path, renderer, episodes, env_name, fps)
    except OSError as error:  # a full disk, or the folder removed meanwhile
        print(f"jaxdqn.evaluate: error: --video {options.path}: {one_line(error)}", file=sys.stderr)
        return 1
    width, height = _frame_size(renderer)
    print(summary_line(options.path, env_name, episodes, sum(frame_counts(episodes)), fps,
                       (width, height + CAPTION_HEIGHT), time.time() - start), flush=True)
    return 0
