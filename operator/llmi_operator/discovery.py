"""Discovery: a LocalModel for every usable folder on the models volume, found with the catalog.

Created models carry ``llmi.dev/discovered: "true"`` and the catalog's path, type and memory (and
whatever the folder's ``llmi.yaml`` sets). Discovery never overwrites a field: a user's edit of a
discovered model stands, and only fields missing from its spec are filled in (a merge patch of
just those fields, guarded by the resourceVersion it read). A LocalModel whose folder is gone is
never deleted, since a user may still want it back; reconcile marks it Failed with the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmi.catalog.scan import ModelEntry, scan
from llmi.localmodel import API_VERSION, KIND, LABEL_DISCOVERED, dns_label
from llmi_operator.apply import lm_path
from llmi_operator.kube import Conflict, Kube
from llmi_operator.settings import OperatorSettings

log = logging.getLogger("llmi.operator.discovery")


@dataclass(frozen=True)
class Report:
    """What one scan changed; ``stale`` are models whose folder came or went since their last status."""

    created: tuple[str, ...] = ()
    filled: tuple[str, ...] = ()
    stale: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()


def model_name(catalog_name: str) -> str:
    """The folder's name made DNS-1123 (``Qwen2.5_7B`` → ``qwen2-5-7b``; ``org/name`` → ``org-name``)."""
    return dns_label(catalog_name)


def idle_timeout(seconds: float) -> str:
    return f"{max(1, round(seconds))}s"


def discovered_spec(entry: ModelEntry, models_dir: Path) -> dict[str, Any]:
    """The spec discovery writes: the catalog's facts, plus the folder's own llmi.yaml choices."""
    spec: dict[str, Any] = {
        "path": entry.path.relative_to(models_dir).as_posix(),
        "type": entry.type.value,
        "memory": entry.memory_bytes,
    }
    if entry.engine != "auto":
        spec["engine"] = entry.engine
    if entry.placement != "auto":
        spec["placement"] = entry.placement
    if entry.pinned:
        spec["pinned"] = True
    if entry.idle_timeout_s is not None:
        spec["idleTimeout"] = idle_timeout(entry.idle_timeout_s)
    return spec


def missing_fields(existing: Mapping[str, Any], discovered: Mapping[str, Any]) -> dict[str, Any]:
    """Only what the spec lacks: a field a user set, even to another value, is theirs."""
    return {k: v for k, v in discovered.items() if k not in existing}


def new_model(name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "namespace": namespace, "labels": {LABEL_DISCOVERED: "true"}},
        "spec": spec,
    }


def _says_missing(body: Mapping[str, Any]) -> bool:
    conditions = (body.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("reason") == "FolderMissing" for c in conditions)


def discover(kube: Kube, settings: OperatorSettings, namespace: str) -> Report:
    """One scan: create what is new, fill what is missing, list the models whose folder changed."""
    root = settings.models_dir
    if not root.is_dir():  # never conclude "every folder is gone" from an unmounted volume
        log.warning("models folder %s is not there; discovery skipped", root)
        return Report(problems=(f"{root} is not a directory",))
    catalog = scan(root, max_model_len=settings.max_model_len)
    problems = [f"{p.path}: {p.reason}" for p in catalog.problems]
    wanted: dict[str, dict[str, Any]] = {}
    for entry in catalog.entries:
        name = model_name(entry.name)
        if name in wanted:
            problems.append(f"{entry.path}: the name {name} is already taken by {wanted[name]['path']}")
            continue
        wanted[name] = discovered_spec(entry, root)
    existing = {m["metadata"]["name"]: m for m in kube.list(lm_path(namespace))}
    created: list[str] = []
    filled: list[str] = []
    for name, spec in wanted.items():
        body = existing.get(name)
        if body is None:
            try:
                kube.create(lm_path(namespace), new_model(name, namespace, spec))
                created.append(name)
            except Conflict:
                pass  # created meanwhile (a user, or a previous scan): next scan fills it
            continue
        if (body["metadata"].get("labels") or {}).get(LABEL_DISCOVERED) != "true":
            continue  # a user's own LocalModel with this name: not ours to touch
        missing = missing_fields(body.get("spec") or {}, spec)
        if missing:
            patch = {"metadata": {"resourceVersion": body["metadata"].get("resourceVersion")}, "spec": missing}
            try:
                kube.patch(lm_path(namespace, name), patch)
                filled.append(name)
            except Conflict:
                pass  # edited meanwhile: look again next scan
    stale = [
        name
        for name, body in existing.items()
        if (body["metadata"].get("labels") or {}).get(LABEL_DISCOVERED) == "true"
        and isinstance((body.get("spec") or {}).get("path"), str)
        and (not (root / body["spec"]["path"]).is_dir()) != _says_missing(body)
    ]
    for problem in problems:
        log.debug("not a usable model: %s", problem)
    return Report(tuple(created), tuple(filled), tuple(stale), tuple(problems))
