"""Measured memory, remembered across restarts: what a model's runtime really held after its load.

Why remember it: the estimate errs (by a quarter, at best), the measured figure does not, and
a restarted ``llmi serve`` should plan with what it learnt yesterday rather than guess again.

A record is keyed by the model folder's real path, the placement kind (``gpu``, ``offload``,
``cpu``) and the device kind (``cpu``, ``cuda``): the same weights take float32 on a CPU and
their own dtype on a GPU. It also holds a fingerprint of the weights (every weights file's
relative name, size and mtime, plus ``config.json``): new weights in the same folder are a new
model, so ``get`` ignores a record whose fingerprint no longer matches.

The file (``measured.json`` in ``LLM_STATE_DIR``, default ``~/.cache/llmi``) is written
atomically (a temporary file in the same folder, then a rename), so a crash mid-write leaves
the old file. A missing, unreadable or corrupt file is an empty store, never an error; it
keeps at most ``MAX_RECORDS`` records, the most recently measured.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmi.catalog.scan import ModelEntry
    from llmi.settings import Settings

FILE_NAME = "measured.json"
VERSION = 1
MAX_RECORDS = 512
WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "*.pt", "*.pth", "*.gguf")
PLACEMENTS = ("gpu", "offload", "cpu")
DEVICES = ("cpu", "cuda")


def default_dir() -> Path:
    return Path.home() / ".cache" / "llmi"


def store_path(settings: Settings) -> Path:
    """Where the store lives for these settings (``LLM_STATE_DIR``, else ``~/.cache/llmi``)."""
    folder = settings.state_dir.expanduser() if settings.state_dir is not None else default_dir()
    return folder / FILE_NAME


def fingerprint(folder: Path) -> str:
    """A digest of the weights files' names, sizes and mtimes (and config.json); "" when unreadable."""
    files: set[Path] = set()
    with contextlib.suppress(OSError):
        for pattern in WEIGHT_PATTERNS:
            files.update(p for p in folder.rglob(pattern) if p.is_file())
        if (folder / "config.json").is_file():
            files.add(folder / "config.json")
    parts: list[str] = []
    for path in sorted(files):
        try:
            st = path.stat()
        except OSError:
            continue
        parts.append(f"{path.relative_to(folder).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}")
    if not parts:
        return ""
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def counted_bytes(entry: ModelEntry, measured: int | None) -> int:
    """What the planner counts for a model: the folder's ``memory`` override, else what was
    measured for this placement and device, else the estimate."""
    if entry.memory_override is not None:
        return entry.memory_override
    return measured if measured is not None else entry.estimate.total_bytes


def _key(path: str, placement: str, device: str) -> str:
    return f"{device}\0{placement}\0{path}"


@dataclass(frozen=True)
class Record:
    path: str  # the model folder's real path
    fingerprint: str
    placement: str
    device: str
    measured_bytes: int
    at: float  # unix time of the measurement

    @staticmethod
    def parse(raw: Any) -> Record | None:
        """A record from its JSON form, or None when any field is missing or of the wrong kind."""
        if not isinstance(raw, dict):
            return None
        texts = [raw.get(k) for k in ("path", "fingerprint", "placement", "device")]
        size, at = raw.get("measured_bytes"), raw.get("at")
        if not all(isinstance(t, str) for t in texts) or raw.get("placement") not in PLACEMENTS:
            return None
        if raw.get("device") not in DEVICES or not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            return None
        if not isinstance(at, int | float) or isinstance(at, bool):
            return None
        return Record(str(texts[0]), str(texts[1]), str(texts[2]), str(texts[3]), size, float(at))


@dataclass(frozen=True)
class MeasuredStore:
    """An immutable view of the records; ``with_`` returns a new store."""

    records: dict[str, Record] = field(default_factory=dict)

    def get(self, entry_path: Path, placement: str, device: str, *, known_fingerprint: str | None = None) -> int | None:
        """The measured bytes for this folder, placement and device, if its weights are unchanged.

        ``known_fingerprint`` is the folder's fingerprint when the caller has it already.
        """
        record = self.records.get(_key(os.path.realpath(entry_path), placement, device))
        if record is None:
            return None
        current = fingerprint(entry_path) if known_fingerprint is None else known_fingerprint
        return record.measured_bytes if current and record.fingerprint == current else None

    def with_(
        self,
        entry_path: Path,
        placement: str,
        device: str,
        measured_bytes: int,
        at: float,
        *,
        known_fingerprint: str | None = None,
    ) -> MeasuredStore:
        """This store plus (or updated with) one measurement; the oldest go past ``MAX_RECORDS``."""
        if placement not in PLACEMENTS or device not in DEVICES or measured_bytes <= 0:
            raise ValueError(f"cannot record {measured_bytes} bytes for placement {placement!r} on {device!r}")
        real = os.path.realpath(entry_path)
        record = Record(
            real,
            fingerprint(entry_path) if known_fingerprint is None else known_fingerprint,
            placement,
            device,
            measured_bytes,
            at,
        )
        return MeasuredStore(_newest({**self.records, _key(real, placement, device): record}))

    def to_json(self) -> dict[str, Any]:
        return {"version": VERSION, "records": [vars(r) for r in self.records.values()]}


def _newest(records: dict[str, Record]) -> dict[str, Record]:
    """At most MAX_RECORDS records, the most recently measured."""
    if len(records) <= MAX_RECORDS:
        return records
    return dict(sorted(records.items(), key=lambda kv: kv[1].at, reverse=True)[:MAX_RECORDS])


def load(path: Path) -> MeasuredStore:
    """The store saved at ``path``; missing, unreadable or corrupt is an empty store."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return MeasuredStore()
    raw = data.get("records") if isinstance(data, dict) and data.get("version") == VERSION else None
    records: dict[str, Record] = {}
    for item in raw if isinstance(raw, list) else []:
        record = Record.parse(item)
        if record is not None:
            records[_key(record.path, record.placement, record.device)] = record
    return MeasuredStore(_newest(records))


def save(store: MeasuredStore, path: Path) -> None:
    """Write atomically (temporary file, fsync, rename); raises OSError when the folder is not writable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(store.to_json(), f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
