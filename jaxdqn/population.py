"""Many agents in one program: independent seeds and hyperparameter sweeps (layer 3 of the design).

`--num_seeds K` trains K independent agents (seeds `seed`, `seed + 1`, ...) and `--sweep lr=1e-4,3e-4`
(several `--sweep` keys form a grid) one agent per grid point and seed, all in one compiled program:
`jax.vmap` over `DQN.init` and `DQN.run_chunk`, with the swept values as traced `HParams` leaves.
Only hyperparameters that are traced can be swept; those fixed at compile time (shapes, schedules'
lengths) need separate runs.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdqn.config import HParams, TrainConfig
from jaxdqn.errors import ConfigError

SWEEPABLE = tuple(field.name for field in dataclasses.fields(HParams))  # the traced hyperparameters


@dataclasses.dataclass(frozen=True)
class Agent:
    """One member of the population: its seed and the hyperparameters that differ from the config's."""

    seed: int
    point: tuple[tuple[str, float], ...] = ()

    @property
    def label(self) -> str:
        values = " ".join(f"{key}={value:g}" for key, value in self.point)
        return f"{values} seed={self.seed}".strip()


def parse_sweep(specs: tuple[str, ...]) -> dict[str, list[float]]:
    """`("lr=1e-4,3e-4", "tau=0.05,1")` -> `{"lr": [1e-4, 3e-4], "tau": [0.05, 1.0]}`; one-line errors."""
    grid: dict[str, list[float]] = {}
    for spec in specs:
        key, equals, values = spec.partition("=")
        key = key.strip()
        if not equals or not key:
            raise ConfigError(f"--sweep expects KEY=V1,V2,..., got {spec!r}")
        if key not in SWEEPABLE:
            known = {field.name for field in dataclasses.fields(TrainConfig)}
            why = ("is fixed when the program is compiled (shapes or schedules); run separate processes"
                   if key in known else "is not a hyperparameter")
            raise ConfigError(f"--sweep {key}: {why}; sweepable: {', '.join(SWEEPABLE)}")
        if key in grid:
            raise ConfigError(f"--sweep {key} given twice")
        parts = [part.strip() for part in values.split(",")]
        if not parts or any(not part for part in parts):
            raise ConfigError(f"--sweep {key}: empty value in {values!r}")
        try:
            grid[key] = [float(part) for part in parts]
        except ValueError:
            raise ConfigError(f"--sweep {key}: not a number in {values!r}") from None
    return grid


def make_agents(config: TrainConfig) -> list[Agent]:
    """The population of a run: every sweep point (or the config alone) times `num_seeds` seeds."""
    grid = parse_sweep(config.sweep)
    points = [tuple(zip(grid, values)) for values in itertools.product(*grid.values())] if grid else [()]
    agents = [Agent(config.seed + offset, point) for point in points for offset in range(config.num_seeds)]
    for agent in agents:  # each point must itself be a valid configuration
        dataclasses.replace(config, **dict(agent.point)).validate()
    return agents


def stacked_hparams(config: TrainConfig, agents: list[Agent]) -> HParams:
    """Each agent's traced hyperparameters, stacked on a leading agent axis."""
    per_agent = [HParams.from_config(dataclasses.replace(config, **dict(agent.point))) for agent in agents]
    return jax.tree.map(lambda *leaves: np.stack(leaves), *per_agent)


def agent_seeds(agents: list[Agent]) -> np.ndarray:
    """The agents' seeds `[agents]` (int32), from which `jaxdqn.parallel.make_init` makes their keys."""
    return np.array([agent.seed for agent in agents], np.int32)


def interquartile_mean(values: np.ndarray) -> float:
    """Mean of the middle 50% (Agarwal et al. 2021, "Deep RL at the Edge of the Statistical Precipice")."""
    ordered = np.sort(np.asarray(values, np.float64))
    cut = int(math.floor(0.25 * ordered.size))
    middle = ordered[cut:ordered.size - cut] if ordered.size > 2 else ordered
    return float(middle.mean())


def agent_results(agents: list[Agent], final_returns: np.ndarray, solved_steps: list[int | None]) -> list[dict[str, Any]]:
    """One row per agent: its seed, swept values, final greedy return (mean and std over episodes)."""
    return [{"seed": agent.seed, **dict(agent.point), "label": agent.label,
             "eval_return_mean": float(returns.mean()), "eval_return_std": float(returns.std()),
             "steps_to_solve": steps}
            for agent, returns, steps in zip(agents, final_returns, solved_steps)]


def population_summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    means = np.array([row["eval_return_mean"] for row in rows])
    return {"agents_eval_return_mean": float(means.mean()), "agents_eval_return_iqm": interquartile_mean(means),
            "agents_eval_return_min": float(means.min()), "agents_eval_return_max": float(means.max())}


def sweep_table(rows: list[dict[str, Any]], keys: list[str]) -> tuple[list[dict[str, Any]], str]:
    """Sweep points ranked by mean final return over their seeds: rows for CSV, and a markdown table."""
    points: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        points.setdefault(tuple(row[key] for key in keys), []).append(row)
    ranked = []
    for values, members in points.items():
        means = [member["eval_return_mean"] for member in members]
        solved = [member["steps_to_solve"] for member in members if member["steps_to_solve"] is not None]
        ranked.append({**dict(zip(keys, values)), "seeds": len(members), "eval_return_mean": float(np.mean(means)),
                       "eval_return_min": float(np.min(means)), "solved_seeds": len(solved),
                       "median_steps_to_solve": float(np.median(solved)) if solved else None})
    ranked.sort(key=lambda row: -row["eval_return_mean"])
    header = [*keys, "seeds", "final eval return (mean over seeds)", "worst seed", "seeds solved",
              "median env steps to solve"]
    lines = ["| rank | " + " | ".join(header) + " |", "|---:|" + "---:|" * len(header)]
    for rank, row in enumerate(ranked, 1):
        steps = f"{row['median_steps_to_solve']:,.0f}" if row["median_steps_to_solve"] is not None else "-"
        cells = [f"{row[key]:g}" for key in keys] + [str(row["seeds"]), f"{row['eval_return_mean']:.1f}",
                                                      f"{row['eval_return_min']:.1f}", str(row["solved_seeds"]), steps]
        lines.append(f"| {rank} | " + " | ".join(cells) + " |")
    return ranked, "\n".join(lines) + "\n"


def summarize(config: TrainConfig, agents: list[Agent], final_returns: np.ndarray, solved_steps: list[int | None],
              log_dir: Path | None) -> dict[str, Any]:
    """The summary's population entries; with a sweep, also writes the ranked `sweep.csv` and `sweep.md`."""
    rows = agent_results(agents, final_returns, solved_steps)
    summary = {**population_summary(rows), "agents": rows}
    sweep_keys = list(parse_sweep(config.sweep))
    if sweep_keys:
        summary["sweep"], table = sweep_table(rows, sweep_keys)
        if log_dir is not None:
            (log_dir / "sweep.md").write_text(table)
            with open(log_dir / "sweep.csv", "w", newline="") as csv_file:
                writer = csv.DictWriter(csv_file, fieldnames=list(summary["sweep"][0]))
                writer.writeheader()
                writer.writerows(summary["sweep"])
    return summary
