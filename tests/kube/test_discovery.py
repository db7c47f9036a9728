"""Discovery: LocalModels for the folders on the models volume, never overwriting a user's fields."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from pathlib import Path

import kopf
import pytest

from llmi.catalog.estimate import Estimate
from llmi.catalog.scan import ModelEntry
from llmi.modeltypes import ModelType
from llmi_operator.discovery import discovered_spec, missing_fields, model_name
from llmi_operator.handlers import discovery_loop
from llmi_operator.settings import OperatorSettings
from tests.kube.cluster import LM, eventually, operator_settings, running_operator
from tests.kube.conftest import KubeEnv

FOLDERS = ("tiny-llama-chat", "tiny-bert-embed", "tiny-bert-reranker", "tiny-vit", "tiny-clip")
TYPES = {
    "tiny-llama-chat": "chat",
    "tiny-bert-embed": "embedding",
    "tiny-bert-reranker": "reranker",
    "tiny-vit": "vision",
    "tiny-clip": "multimodal",
    "acme-tiny-qwen2-chat": "chat",
}


def test_names_are_folder_names_made_dns_1123() -> None:
    assert model_name("Qwen2.5-7B-Instruct_AWQ") == "qwen2-5-7b-instruct-awq"
    assert model_name("Acme/Tiny_Qwen2.Chat") == "acme-tiny-qwen2-chat"


def test_spec_carries_the_catalog_and_the_folders_own_choices(tmp_path: Path) -> None:
    estimate = Estimate(weights_bytes=1, overhead_bytes=0, kv_cache_bytes=0, total_bytes=1)
    entry = ModelEntry("org/m", ModelType.CHAT, tmp_path / "org" / "m", 3 * 2**30, estimate)
    assert discovered_spec(entry, tmp_path) == {"path": "org/m", "type": "chat", "memory": 3 * 2**30}
    chosen = ModelEntry("m", ModelType.CHAT, tmp_path / "m", 5, estimate, "vllm", "offload", True, 90.0)
    assert discovered_spec(chosen, tmp_path) == {
        "path": "m",
        "type": "chat",
        "memory": 5,
        "engine": "vllm",
        "placement": "offload",
        "pinned": True,
        "idleTimeout": "90s",
    }


def test_only_missing_fields_are_filled() -> None:
    found = {"path": "m", "type": "chat", "memory": 5}
    assert missing_fields({"path": "m", "memory": "6Gi"}, found) == {"type": "chat"}
    assert missing_fields(found, found) == {}


@pytest.mark.slow
async def test_discovery_creates_fills_and_marks(
    kube_env: KubeEnv, tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    e, ns = kube_env.emulator, kube_env.namespace
    models = tmp_path / "models"
    for name in FOLDERS:
        shutil.copytree(tiny_models[name], models / name)
    shutil.copytree(tiny_models["tiny-qwen2-chat"], models / "Acme" / "Tiny_Qwen2.Chat")
    (models / "broken").mkdir()
    (models / "broken" / "config.json").write_text("{not json")
    edited = {"metadata": {"name": "tiny-bert-embed", "labels": {"llmi.dev/discovered": "true"}}}
    await e.apply_create(LM, ns, edited | {"spec": {"path": "tiny-bert-embed", "memory": 123}})
    users = {"metadata": {"name": "tiny-vit"}, "spec": {"path": "vision/other", "type": "vision", "memory": 7}}
    await e.apply_create(LM, ns, users)

    def listed() -> dict[str, dict]:
        return {m["metadata"]["name"]: m for m in e.find_all(LM, ns)}

    async with running_operator(operator_settings(ns, models)):
        found = await eventually(lambda: (m := listed()).keys() >= TYPES.keys() and m, "a LocalModel per folder")
        await eventually(lambda: listed()["tiny-bert-embed"]["spec"].get("type"), "the missing type filled in")
        assert set(listed()) == set(TYPES)  # nothing for the broken folder
        for name, kind in TYPES.items():
            if name == "tiny-vit":
                continue
            spec = found[name]["spec"] if name != "tiny-bert-embed" else listed()[name]["spec"]
            assert found[name]["metadata"]["labels"] == {"llmi.dev/discovered": "true"}
            assert spec["type"] == kind
            assert spec["path"] == ("Acme/Tiny_Qwen2.Chat" if name.startswith("acme") else name)
            assert isinstance(spec["memory"], int)
            assert spec["memory"] > 0
        assert listed()["tiny-bert-embed"]["spec"]["memory"] == 123  # the user's value stands
        assert listed()["tiny-vit"]["spec"] == users["spec"]  # not discovery's to touch
        await eventually(lambda: listed()["tiny-clip"].get("status", {}).get("phase") == "Available", "reconciled")

        shutil.rmtree(models / "tiny-clip")
        gone = await eventually(
            lambda: (s := listed()["tiny-clip"].get("status", {})).get("phase") == "Failed" and s, "marked missing"
        )
        assert "tiny-clip is missing" in gone["message"]
        assert {c["type"]: c["reason"] for c in gone["conditions"]}["Ready"] == "FolderMissing"
        shutil.copytree(tiny_models["tiny-clip"], models / "tiny-clip")
        await eventually(lambda: listed()["tiny-clip"]["status"]["phase"] == "Available", "back once the folder is")
    assert "tiny-clip" in listed()  # never deleted


async def test_a_failing_scan_is_logged_and_discovery_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []
    second = asyncio.Event()
    loop = asyncio.get_running_loop()

    def scan(memo: object, config: object) -> None:
        calls.append(len(calls))
        if len(calls) == 1:
            raise OSError("stale NFS file handle")
        loop.call_soon_threadsafe(second.set)

    config = OperatorSettings(discovery_interval_s=0.01)
    task = asyncio.create_task(discovery_loop(kopf.Memo(), config, scan))
    try:
        await asyncio.wait_for(second.wait(), 30)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert calls[:2] == [0, 1]
    assert "discovery failed (1 in a row)" in caplog.text
    assert "stale NFS file handle" in caplog.text
