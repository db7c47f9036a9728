"""The measured-memory store: survives a restart, shrugs off a corrupt file, forgets changed weights."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from llmi.catalog import measured
from llmi.catalog.measured import MAX_RECORDS, MeasuredStore, counted_bytes, fingerprint, load, save, store_path
from llmi.catalog.scan import scan
from llmi.settings import Settings
from tests.fake_models import small_chat_model, write_safetensors

MIB = 1024 * 1024


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return small_chat_model(tmp_path / "models" / "m")


def test_a_saved_store_loads_back_with_every_record(model: Path, tmp_path: Path) -> None:
    other = small_chat_model(tmp_path / "models" / "other", hidden=128)
    store = (
        MeasuredStore()
        .with_(model, "cpu", "cpu", 400 * MIB, at=10.0)
        .with_(model, "gpu", "cuda", 900 * MIB, at=11.0)
        .with_(other, "offload", "cuda", 2000 * MIB, at=12.0)
    )
    path = tmp_path / "state" / "measured.json"
    save(store, path)
    again = load(path)
    assert again == store
    assert again.get(model, "cpu", "cpu") == 400 * MIB
    assert again.get(model, "gpu", "cuda") == 900 * MIB
    assert again.get(other, "offload", "cuda") == 2000 * MIB
    assert again.get(model, "offload", "cuda") is None  # another placement was never measured
    assert again.get(other, "cpu", "cpu") is None


def test_with_returns_a_new_store_and_replaces_the_same_key(model: Path) -> None:
    empty = MeasuredStore()
    one = empty.with_(model, "cpu", "cpu", 400 * MIB, at=1.0)
    two = one.with_(model, "cpu", "cpu", 450 * MIB, at=2.0)
    assert empty.get(model, "cpu", "cpu") is None
    assert one.get(model, "cpu", "cpu") == 400 * MIB
    assert two.get(model, "cpu", "cpu") == 450 * MIB
    assert len(two.records) == 1


def test_the_same_folder_through_a_symlink_is_the_same_model(model: Path, tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(model)
    store = MeasuredStore().with_(link, "cpu", "cpu", 400 * MIB, at=1.0)
    assert store.get(model, "cpu", "cpu") == 400 * MIB


def test_changed_weights_invalidate_the_record(model: Path) -> None:
    store = MeasuredStore().with_(model, "cpu", "cpu", 400 * MIB, at=1.0)
    before = fingerprint(model)
    write_safetensors(model / "model.safetensors", {"w": ("BF16", [2000, 64])})
    assert fingerprint(model) != before
    assert store.get(model, "cpu", "cpu") is None
    # A new shard next to the old ones changes the fingerprint too.
    store = store.with_(model, "cpu", "cpu", 500 * MIB, at=2.0)
    write_safetensors(model / "extra.safetensors", {"x": ("F32", [4])})
    assert store.get(model, "cpu", "cpu") is None


def test_a_folder_without_weights_is_never_matched(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert fingerprint(empty) == ""
    assert MeasuredStore().with_(empty, "cpu", "cpu", 1, at=1.0).get(empty, "cpu", "cpu") is None


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{not json",
        b"\xff\xfe",
        b"[1, 2, 3]",
        b'{"version": 99, "records": []}',
        b"[" * 100_000,
        json.dumps({"version": 1, "records": "nope"}).encode(),
    ],
)
def test_a_corrupt_file_is_an_empty_store(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "measured.json"
    path.write_bytes(content)
    assert load(path) == MeasuredStore()


def test_malformed_records_are_skipped_and_good_ones_kept(model: Path, tmp_path: Path) -> None:
    good = MeasuredStore().with_(model, "cpu", "cpu", 400 * MIB, at=1.0)
    raw = good.to_json()
    good_record = raw["records"][0]
    raw["records"] += [
        {**good_record, "measured_bytes": -5},
        {**good_record, "measured_bytes": True},
        {**good_record, "placement": "moon"},
        {**good_record, "device": "tpu"},
        {**good_record, "at": "yesterday"},
        {k: v for k, v in good_record.items() if k != "path"},
        "not a record",
    ]
    path = tmp_path / "measured.json"
    path.write_text(json.dumps(raw))
    assert load(path) == good


def test_a_missing_file_or_folder_is_an_empty_store(tmp_path: Path) -> None:
    assert load(tmp_path / "nope" / "measured.json") == MeasuredStore()
    assert load(tmp_path) == MeasuredStore()  # a directory where the file should be


def test_save_replaces_the_file_atomically_and_leaves_no_temporary_files(model: Path, tmp_path: Path) -> None:
    path = tmp_path / "state" / "measured.json"
    save(MeasuredStore().with_(model, "cpu", "cpu", 1 * MIB, at=1.0), path)
    inode = path.stat().st_ino
    save(MeasuredStore().with_(model, "cpu", "cpu", 2 * MIB, at=2.0), path)
    assert path.stat().st_ino != inode  # a new file renamed over the old one, not rewritten in place
    assert load(path).get(model, "cpu", "cpu") == 2 * MIB
    assert os.listdir(path.parent) == ["measured.json"]


def test_a_failed_save_keeps_the_old_file(model: Path, tmp_path: Path) -> None:
    path = tmp_path / "measured.json"
    save(MeasuredStore().with_(model, "cpu", "cpu", 1 * MIB, at=1.0), path)
    unserialisable = MeasuredStore({"k": object()})  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        save(unserialisable, path)
    assert load(path).get(model, "cpu", "cpu") == 1 * MIB
    assert sorted(os.listdir(tmp_path)) == ["measured.json", "models"]  # no temporary file left behind


def test_the_store_keeps_only_the_most_recent_records(model: Path, tmp_path: Path) -> None:
    store = MeasuredStore()
    folders = []
    for i in range(MAX_RECORDS + 3):
        folder = tmp_path / f"f{i}"
        folder.mkdir()
        folders.append(folder)
        store = store.with_(folder, "cpu", "cpu", 1 + i, at=float(i), known_fingerprint="x")
    assert len(store.records) == MAX_RECORDS
    assert store.get(folders[0], "cpu", "cpu", known_fingerprint="x") is None
    assert store.get(folders[-1], "cpu", "cpu", known_fingerprint="x") == MAX_RECORDS + 3
    path = tmp_path / "measured.json"
    save(store, path)
    assert len(load(path).records) == MAX_RECORDS


def test_bad_measurements_are_refused(model: Path) -> None:
    with pytest.raises(ValueError, match="cannot record"):
        MeasuredStore().with_(model, "cpu", "cpu", 0, at=1.0)
    with pytest.raises(ValueError, match="cannot record"):
        MeasuredStore().with_(model, "moon", "cpu", 5, at=1.0)


def test_the_store_lives_in_the_state_dir_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLM_STATE_DIR", raising=False)
    assert store_path(Settings(state_dir=tmp_path)) == tmp_path / "measured.json"
    assert store_path(Settings()) == Path.home() / ".cache" / "llmi" / measured.FILE_NAME


def test_the_planner_counts_the_override_then_the_measurement_then_the_estimate(tmp_path: Path) -> None:
    folder = small_chat_model(tmp_path / "models" / "m")
    (entry,) = scan(tmp_path / "models", max_model_len=4096, device="cpu").entries
    assert counted_bytes(entry, None) == entry.estimate.total_bytes
    assert counted_bytes(entry, 123) == 123
    (folder / "llmi.yaml").write_text("memory: 2GiB\n")
    (overridden,) = scan(tmp_path / "models", max_model_len=4096, device="cpu").entries
    assert overridden.memory_override == 2 * 1024 * MIB
    assert counted_bytes(overridden, 123) == 2 * 1024 * MIB


def test_scan_records_the_weights_fingerprint_for_lookups_without_io(tmp_path: Path) -> None:
    folder = small_chat_model(tmp_path / "models" / "m")
    (entry,) = scan(tmp_path / "models", max_model_len=4096, device="cpu").entries
    assert entry.weights_fingerprint == fingerprint(folder) != ""
    store = MeasuredStore().with_(folder, "cpu", "cpu", 5 * MIB, at=1.0)
    assert store.get(entry.path, "cpu", "cpu", known_fingerprint=entry.weights_fingerprint) == 5 * MIB
    assert store.get(entry.path, "cpu", "cpu", known_fingerprint="other weights") is None
