"""OGBench manipulation environments: names, construction, seeding, snapshots, rendering.

OGBench names datasets, not environments: ``cube-single-play-singletask-task2-v0`` is the
``cube-single`` family, the ``play`` dataset, single-task reward for task 2. OGBench's own
``make_env_and_datasets(name, env_only=True)`` turns such a name into a gymnasium env; this
module checks the name first so a typo gets a list of valid names instead of a registry error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

DATASET_TYPES = ("play", "noisy")
_NAME = re.compile(
    r"^(?P<family>(?:visual-)?[a-z]+(?:-[a-z0-9]+)?)-(?P<dtype>[a-z]+)"
    r"(?:-singletask(?:-task(?P<task>\d+))?)?-v0$"
)


@dataclass(frozen=True)
class EnvName:
    """A parsed dataset-style OGBench name.

    ``family`` is the env family (``cube-single``, ``scene``, ``puzzle-3x3``); ``dataset_type`` is
    ``play`` or ``noisy``; ``singletask`` says whether the name asks for the reward-based single-task
    env; ``task_id`` is its task (``None`` for a goal-conditioned name, 0 for the family's default
    task, as OGBench's ``...-singletask-v0`` means).
    """

    family: str
    dataset_type: str
    singletask: bool
    task_id: int | None

    @property
    def dataset_name(self) -> str:
        """The file stem OGBench stores this dataset under, e.g. ``cube-single-play-v0``."""
        return f"{self.family}-{self.dataset_type}-v0"

    @property
    def env_id(self) -> str:
        """The gymnasium id of the environment, e.g. ``cube-single-singletask-task2-v0``."""
        if not self.singletask:
            return f"{self.family}-v0"
        suffix = "" if not self.task_id else f"-task{self.task_id}"
        return f"{self.family}-singletask{suffix}-v0"

    @property
    def name(self) -> str:
        """The full dataset-style name this was parsed from (normalised)."""
        if not self.singletask:
            return self.dataset_name
        suffix = "" if not self.task_id else f"-task{self.task_id}"
        return f"{self.family}-{self.dataset_type}-singletask{suffix}-v0"


@lru_cache(maxsize=1)
def env_families() -> tuple[str, ...]:
    """Manipulation env families OGBench registers (``cube-single``, ``scene``, ...), sorted."""
    import gymnasium
    import ogbench  # noqa: F401  (registers the envs)

    families = set()
    for env_id, spec in gymnasium.registry.items():
        if "manipspace" in str(spec.entry_point) and "singletask" not in env_id:
            families.add(env_id[: -len("-v0")])
    return tuple(sorted(families))


@lru_cache(maxsize=1)
def _task_counts() -> dict[str, int]:
    import gymnasium
    import ogbench  # noqa: F401

    counts: dict[str, int] = {}
    for env_id in gymnasium.registry:
        m = re.match(r"^(.*)-singletask-task(\d+)-v0$", env_id)
        if m:
            counts[m.group(1)] = max(counts.get(m.group(1), 0), int(m.group(2)))
    return counts


def valid_names(singletask: bool = True, visual: bool = False) -> list[str]:
    """Dataset-style names this module accepts, sorted.

    Args:
        singletask: include the ``-singletask-taskN`` variants (and the default-task
            ``-singletask`` one); goal-conditioned names are always included.
        visual: include the pixel-observation ``visual-*`` families.
    """
    names = []
    counts = _task_counts()
    for family in env_families():
        if family.startswith("visual-") and not visual:
            continue
        for dtype in DATASET_TYPES:
            names.append(f"{family}-{dtype}-v0")
            if singletask and family in counts:
                names.append(f"{family}-{dtype}-singletask-v0")
                names += [
                    f"{family}-{dtype}-singletask-task{t}-v0" for t in range(1, counts[family] + 1)
                ]
    return sorted(names)


def _name_error(name: str, why: str) -> ValueError:
    families = ", ".join(f for f in env_families() if not f.startswith("visual-"))
    return ValueError(
        f"{why}: {name!r}. A name is FAMILY-DATASET[-singletask[-taskN]]-v0 with FAMILY one of "
        f"{families} (or visual-FAMILY), DATASET one of {', '.join(DATASET_TYPES)}, e.g. "
        "cube-single-play-singletask-task2-v0, scene-play-singletask-task2-v0, "
        "puzzle-3x3-play-singletask-task4-v0. All valid names: core.envs.valid_names()."
    )


def parse_name(name: str) -> EnvName:
    """Parse a dataset-style OGBench name; a wrong one raises ``ValueError`` listing valid forms."""
    m = _NAME.match(name)
    if m is None:
        raise _name_error(name, "not an OGBench manipulation dataset name")
    family, dtype, task = m.group("family"), m.group("dtype"), m.group("task")
    if family not in env_families():
        raise _name_error(name, f"unknown env family {family!r}")
    if dtype not in DATASET_TYPES:
        raise _name_error(name, f"unknown dataset type {dtype!r}")
    singletask = "-singletask" in name
    task_id = None
    if singletask:
        task_id = 0 if task is None else int(task)
        n_tasks = _task_counts().get(family, 0)
        if not 0 <= task_id <= n_tasks:
            raise _name_error(name, f"{family} has tasks 1..{n_tasks}, not {task_id}")
    return EnvName(family, dtype, singletask, task_id)
