"""Scanning model folders: layouts, the Hugging Face cache, llmi.yaml overrides, problems."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from llmi.catalog.scan import parse_duration, parse_size, scan, valid_name
from llmi.modeltypes import ModelType
from tests.fake_models import small_chat_model

GIB = 1024**3


def reasons(models: Path, **kwargs: Path) -> dict[str, str]:
    return {p.name: p.reason for p in scan(models, max_model_len=4096, **kwargs).problems}


def test_flat_and_nested_layouts(tmp_path: Path) -> None:
    small_chat_model(tmp_path / "llama")
    small_chat_model(tmp_path / "Qwen" / "Qwen2.5-0.5B")
    small_chat_model(tmp_path / "Qwen" / "Qwen2.5-1.5B")
    (tmp_path / "Qwen" / "partial").mkdir()
    (tmp_path / ".cache" / "huggingface").mkdir(parents=True)
    (tmp_path / "README.md").write_text("not a model")
    (tmp_path / "empty").mkdir()
    broken = small_chat_model(tmp_path / "broken")
    (broken / "config.json").write_text("{oops")
    catalog = scan(tmp_path, max_model_len=4096)
    assert [e.name for e in catalog.entries] == ["Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-1.5B", "llama"]
    assert catalog.get("llama") is not None
    assert catalog.get("llama").path == tmp_path / "llama"  # type: ignore[union-attr]
    assert catalog.get("nope") is None
    problems = {p.name: p for p in catalog.problems}
    assert set(problems) == {"Qwen/partial", "empty", "broken"}
    assert problems["Qwen/partial"].reason == "no config.json"
    assert problems["empty"].path == tmp_path / "empty"
    assert "config.json is unreadable" in problems["broken"].reason


def test_missing_models_dir_is_a_problem(tmp_path: Path) -> None:
    catalog = scan(tmp_path / "nope", max_model_len=4096)
    assert catalog.entries == ()
    assert [p.reason for p in catalog.problems] == ["not a directory"]


def test_hf_cache_uses_the_newest_snapshot_and_the_repo_id(tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    repo = cache / "models--Qwen--Qwen2.5-0.5B"
    old = small_chat_model(repo / "snapshots" / "aaaa")
    new = small_chat_model(repo / "snapshots" / "bbbb", hidden=128)
    os.utime(old, (2_000_000_000, 2_000_000_000))
    os.utime(new, (1_000_000_000, 1_000_000_000))
    small_chat_model(cache / "models--solo" / "snapshots" / "cccc")
    small_chat_model(cache / "models--Qwen--Qwen3-Reranker-0.6B" / "snapshots" / "dddd")
    (cache / "models--empty--repo" / "refs").mkdir(parents=True)
    small_chat_model(cache / "datasets--org--data" / "snapshots" / "eeee")
    (tmp_path / "models").mkdir()
    catalog = scan(tmp_path / "models", hf_cache=cache, max_model_len=4096)
    entries = {e.name: e for e in catalog.entries}
    assert set(entries) == {"Qwen/Qwen2.5-0.5B", "solo", "Qwen/Qwen3-Reranker-0.6B"}
    assert entries["Qwen/Qwen2.5-0.5B"].path == old
    # The snapshot folder is a hash, so the repo name supplies detect_type's name hint.
    assert entries["Qwen/Qwen3-Reranker-0.6B"].type is ModelType.RERANKER
    assert [(p.name, p.reason) for p in catalog.problems] == [("empty/repo", "no snapshots (download incomplete?)")]


def test_duplicate_names_are_problems_and_models_dir_wins(tmp_path: Path) -> None:
    models, cache = tmp_path / "models", tmp_path / "hub"
    small_chat_model(models / "Qwen" / "Qwen2.5-0.5B")
    small_chat_model(cache / "models--Qwen--Qwen2.5-0.5B" / "snapshots" / "rev")
    small_chat_model(models / "a")
    (small_chat_model(models / "b") / "llmi.yaml").write_text("name: a\n")
    catalog = scan(models, hf_cache=cache, max_model_len=4096)
    assert {e.name: e.path for e in catalog.entries} == {
        "Qwen/Qwen2.5-0.5B": models / "Qwen" / "Qwen2.5-0.5B",
        "a": models / "a",
    }
    assert sorted(p.reason.split(" is already")[0] for p in catalog.problems) == [
        "name 'Qwen/Qwen2.5-0.5B'",
        "name 'a'",
    ]


def test_llmi_yaml_overrides(tmp_path: Path) -> None:
    folder = small_chat_model(tmp_path / "m")
    (folder / "llmi.yaml").write_text(
        "name: my-chat\nengine: vllm\nplacement: offload\nmemory: 6GiB\npinned: true\nidle_timeout: 10m\n"
    )
    (entry,) = scan(tmp_path, max_model_len=4096).entries
    assert (entry.name, entry.type, entry.engine, entry.placement) == ("my-chat", ModelType.CHAT, "vllm", "offload")
    assert entry.memory_bytes == 6 * GIB
    assert entry.memory_bytes != entry.estimate.total_bytes
    assert entry.pinned is True
    assert entry.idle_timeout_s == 600.0


def test_defaults_without_llmi_yaml(tmp_path: Path) -> None:
    small_chat_model(tmp_path / "m")
    (entry,) = scan(tmp_path, max_model_len=4096).entries
    assert (entry.engine, entry.placement, entry.pinned, entry.idle_timeout_s) == ("auto", "auto", False, None)
    assert entry.memory_bytes == entry.estimate.total_bytes


@pytest.mark.parametrize(
    ("yaml_text", "reason"),
    [
        ("placement: gpuu\n", "placement 'gpuu' is not one of"),
        ("engine: tgi\n", "engine 'tgi' is not one of"),
        ("type: embedding\nengine: vllm\n", "engine vllm serves chat models only"),
        ("type: wizard\n", "llmi.yaml type 'wizard'"),
        ("memory: lots\n", "memory 'lots' is not a positive size"),
        ("memory: -5\n", "memory -5 is not a positive size"),
        ("memory: 6 XB\n", "is not a positive size"),
        ("idle_timeout: -1\n", "idle_timeout -1 is not a positive duration"),
        ("idle_timeout: soon\n", "idle_timeout 'soon'"),
        ("pin: yes please\n", "pin/pinned must be true or false"),
        ("pin: true\npinned: false\n", "pin and pinned disagree"),
        ("name: ../evil\n", "name '../evil' must match"),
        ("name: a//b\n", "name 'a//b' must match"),
        ("name: 'has space'\n", "name 'has space' must match"),
        ("- a list\n", "llmi.yaml must be a mapping"),
        ("key: [unclosed\n", "llmi.yaml is unreadable"),
    ],
)
def test_bad_overrides_are_problems(tmp_path: Path, yaml_text: str, reason: str) -> None:
    (small_chat_model(tmp_path / "m") / "llmi.yaml").write_text(yaml_text)
    catalog = scan(tmp_path, max_model_len=4096)
    assert catalog.entries == ()
    (problem,) = catalog.problems
    assert reason in problem.reason
    assert problem.path == tmp_path / "m"


def test_folder_names_must_be_safe(tmp_path: Path) -> None:
    small_chat_model(tmp_path / "bad name")
    small_chat_model(tmp_path / "good-name_1.5")
    catalog = scan(tmp_path, max_model_len=4096)
    assert [e.name for e in catalog.entries] == ["good-name_1.5"]
    assert [p.name for p in catalog.problems] == ["bad name"]


def test_no_weights_is_a_problem(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    assert reasons(tmp_path) == {"m": "no weights (*.safetensors, pytorch_model*.bin, *.pt)"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [(123, 123), ("6GiB", 6 * GIB), ("6GB", 6 * 10**9), ("512 MiB", 512 * 2**20), ("1.5GiB", 3 * 2**29), ("42", 42)],
)
def test_parse_size(text: object, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", [0, -1, True, "6 gigs", "", None, 1.5, "0GB"])
def test_parse_size_rejects(text: object) -> None:
    with pytest.raises(ValueError, match="not a positive size"):
        parse_size(text)


@pytest.mark.parametrize(("text", "expected"), [(90, 90.0), (1.5, 1.5), ("90s", 90.0), ("10m", 600.0), ("1h", 3600.0)])
def test_parse_duration(text: object, expected: float) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", [0, -3, False, "10 minutes", "", None])
def test_parse_duration_rejects(text: object) -> None:
    with pytest.raises(ValueError, match="not a positive duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("Qwen2.5-7B", True),
        ("org/name", True),
        ("a/b/c", True),
        ("../x", False),
        ("a/../b", False),
        ("a/./b", False),
        ("a/", False),
        ("/abs", False),
        (".hidden", False),
        ("a b", False),
        ("", False),
    ],
)
def test_valid_name(name: str, ok: bool) -> None:
    assert valid_name(name) is ok
