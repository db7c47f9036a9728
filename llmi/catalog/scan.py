"""Find the model folders under a models directory (and a Hugging Face cache) and describe them.

Layouts:

- ``models_dir/NAME/config.json``: model ``NAME``.
- ``models_dir/ORG/NAME/config.json`` (ORG has no config.json itself): model ``ORG/NAME``.
- ``hf_cache/models--ORG--NAME/snapshots/REV/``: model ``ORG/NAME`` (the repo id, which is what
  clients of the hub already call it), from the snapshot changed most recently. Entries in
  ``models_dir`` are scanned first, so they win a name clash; the loser is a problem.

Why problems rather than exceptions: one broken folder (a partial download, a hostile
safetensors header, a typo in ``llmi.yaml``) must never hide the other models, and it must
never vanish silently either. Hidden folders (``.cache``, ``.locks``) are not model folders.

``llmi.yaml`` keys: ``name``, ``type``, ``engine`` (auto/transformers/vllm), ``placement``
(auto/gpu/offload/cpu), ``memory`` (bytes, or ``"6GiB"``/``"6GB"``/``"512MiB"``: GiB/MiB are
powers of 1024, GB/MB powers of 1000), ``pin``/``pinned`` (bool), ``idle_timeout`` (seconds,
or ``"90s"``/``"10m"``/``"1h"``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from llmi.catalog.classify import NotAModel, detect_type, read_overrides
from llmi.catalog.estimate import Estimate, Launch, estimate
from llmi.catalog.measured import fingerprint
from llmi.modeltypes import ModelType
from llmi.names import MAX_NAME_CHARS, NAME_RE, valid_name
from llmi.planner import DeviceKind, PlacementOverride

Engine = Literal["auto", "transformers", "vllm"]
ENGINES: tuple[Engine, ...] = ("auto", "transformers", "vllm")
PLACEMENTS: tuple[PlacementOverride, ...] = ("auto", "gpu", "offload", "cpu")
CONFIG_FILES = ("config.json", "llmi.yaml", "llmi.yml", "modules.json")

SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?\s*$")
SIZE_UNITS = {
    None: 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KiB": 2**10,
    "MiB": 2**20,
    "GiB": 2**30,
    "TiB": 2**40,
}
DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h)?\s*$")
DURATION_UNITS = {None: 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True)
class ModelEntry:
    name: str
    type: ModelType
    path: Path
    memory_bytes: int  # for the budget's device kind: the override, else the estimate
    estimate: Estimate
    engine: Engine = "auto"
    placement: PlacementOverride = "auto"
    pinned: bool = False
    idle_timeout_s: float | None = None
    memory_override: int | None = None  # llmi.yaml's ``memory``: wins over estimate and measurement
    weights_fingerprint: str = ""  # measured.fingerprint(path) at scan time: a store lookup without I/O


@dataclass(frozen=True)
class Problem:
    """A folder that cannot be served, with the name it would have had and why."""

    path: Path
    reason: str
    name: str


@dataclass(frozen=True)
class Catalog:
    entries: tuple[ModelEntry, ...]
    problems: tuple[Problem, ...]

    def get(self, name: str) -> ModelEntry | None:
        return next((e for e in self.entries if e.name == name), None)


def parse_size(value: Any) -> int:
    """Bytes from an int or a string such as ``"6GiB"``; raises ValueError."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = SIZE_RE.match(value) if isinstance(value, str) else None
    if not match or float(match[1]) <= 0:
        raise ValueError(f"memory {value!r} is not a positive size such as 6GiB, 6GB or a byte count")
    return int(float(match[1]) * SIZE_UNITS[match[2]])


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string such as ``"10m"``; raises ValueError."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    match = DURATION_RE.match(value) if isinstance(value, str) else None
    if not match or float(match[1]) <= 0:
        raise ValueError(f"idle_timeout {value!r} is not a positive duration such as 600, 90s, 10m or 1h")
    return float(match[1]) * DURATION_UNITS[match[2]]


def _choice(overrides: dict[str, Any], key: str, choices: tuple[str, ...]) -> str:
    value = overrides.get(key, "auto")
    if value not in choices:
        raise ValueError(f"{key} {value!r} is not one of {', '.join(choices)}")
    return str(value)


def _pinned(overrides: dict[str, Any]) -> bool:
    values = {overrides[k] for k in ("pin", "pinned") if k in overrides}
    if not values <= {True, False} or any(not isinstance(v, bool) for v in values):
        raise ValueError("pin/pinned must be true or false")
    if len(values) > 1:
        raise ValueError("pin and pinned disagree")
    return values.pop() if values else False


def describe(
    folder: Path,
    name: str,
    max_model_len: int,
    device: DeviceKind = "cuda",
    *,
    launch: Launch = "cold",
) -> ModelEntry:
    """The entry for one model folder, estimated for ``device`` and a runtime started as
    ``launch``; raises NotAModel (or ValueError) with the reason."""
    overrides = read_overrides(folder)
    model_type = detect_type(folder)
    if "type" not in overrides and model_type is ModelType.CHAT:
        model_type = _name_hint(name, model_type)
    if "name" in overrides:
        name = str(overrides["name"])
    if not valid_name(name):
        raise ValueError(
            f"name {name!r} must match {NAME_RE.pattern} without '.' or '..' parts, at most {MAX_NAME_CHARS} characters"
        )
    engine = cast(Engine, _choice(overrides, "engine", ENGINES))
    if engine == "vllm" and model_type is not ModelType.CHAT:
        raise ValueError(f"engine vllm serves chat models only, this is a {model_type} model")
    place = cast(PlacementOverride, _choice(overrides, "placement", PLACEMENTS))
    pinned = _pinned(overrides)
    idle = parse_duration(overrides["idle_timeout"]) if overrides.get("idle_timeout") is not None else None
    est = estimate(folder, model_type, max_model_len, device, launch=launch)
    override = parse_size(overrides["memory"]) if overrides.get("memory") is not None else None
    memory = est.total_bytes if override is None else override
    weights = fingerprint(folder)
    return ModelEntry(name, model_type, folder, memory, est, engine, place, pinned, idle, override, weights)


def _name_hint(name: str, model_type: ModelType) -> ModelType:
    """detect_type reads name hints from the folder name; a cache snapshot's folder is a hash."""
    lowered = name.rsplit("/", 1)[-1].lower()
    if "rerank" in lowered:
        return ModelType.RERANKER
    if "embed" in lowered:
        return ModelType.EMBEDDING
    return model_type


def _is_model_folder(path: Path) -> bool:
    return any((path / f).is_file() for f in CONFIG_FILES)


def _visible_dirs(path: Path) -> list[Path]:
    try:
        return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []


def candidates(models_dir: Path) -> list[tuple[str, Path]]:
    """(name, folder) for every folder that is, or should have been, a model."""
    found: list[tuple[str, Path]] = []
    for folder in _visible_dirs(models_dir):
        nested = [] if _is_model_folder(folder) else _visible_dirs(folder)
        if any(_is_model_folder(sub) for sub in nested):
            found.extend((f"{folder.name}/{sub.name}", sub) for sub in nested)
        else:
            found.append((folder.name, folder))
    return found


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def cache_candidates(hf_cache: Path) -> tuple[list[tuple[str, Path]], list[Problem]]:
    """(repo id, newest snapshot) for each ``models--*`` folder of a Hugging Face hub cache."""
    found: list[tuple[str, Path]] = []
    problems: list[Problem] = []
    for repo in _visible_dirs(hf_cache):
        if not repo.name.startswith("models--"):
            continue
        name = repo.name.removeprefix("models--").replace("--", "/")
        snapshots = _visible_dirs(repo / "snapshots")
        if not snapshots:
            problems.append(Problem(repo, "no snapshots (download incomplete?)", name))
            continue
        found.append((name, max(snapshots, key=lambda p: (_mtime(p), p.name))))
    return found, problems


def scan(
    models_dir: Path,
    *,
    hf_cache: Path | None = None,
    max_model_len: int,
    device: DeviceKind = "cuda",
    launch: Launch = "cold",
) -> Catalog:
    """Every usable model under models_dir (then hf_cache), and every folder that is not, with why.

    ``device`` is the budget's kind (``Budget.device``): memory estimates are made for it, and for
    runtimes started as ``launch`` (``hardware.launch``: cold, forked from a pre-imported
    launcher, or forked beside a spare runtime).
    """
    found = candidates(models_dir)
    problems = [Problem(d, "not a directory", "") for d in (models_dir, hf_cache) if d and not d.is_dir()]
    if hf_cache is not None:
        cached, cache_problems = cache_candidates(hf_cache)
        found += cached
        problems += cache_problems
    entries: dict[str, ModelEntry] = {}
    for name, folder in found:
        try:
            entry = describe(folder, name, max_model_len, device, launch=launch)
        except (NotAModel, ValueError, OSError, RecursionError) as exc:
            problems.append(Problem(folder, str(exc) or type(exc).__name__, name))
            continue
        if entry.name in entries:
            used = entries[entry.name].path
            problems.append(Problem(folder, f"name {entry.name!r} is already used by {used}", entry.name))
            continue
        entries[entry.name] = entry
    return Catalog(tuple(entries.values()), tuple(problems))
