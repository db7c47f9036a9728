"""The warm launcher with real processes: runtimes forked from the pre-imported fork server."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from llmi.catalog.scan import scan
from llmi.settings import Settings
from llmi_router.embedded import warm
from llmi_router.embedded.forkclient import pss_bytes
from llmi_router.embedded.launch import RuntimeSpec
from llmi_router.embedded.process import RuntimeHandle, StartFailed
from llmi_router.embedded.warm import BACKGROUND_NICE, WarmLauncher
from tests.serve_process import model_folder, start_serve
from tests.servers import runtime_env, wait_gone
from tests.tiny_models import TINY_TYPES

pytestmark = pytest.mark.slow
# The launcher's socket reader runs on the loop the fixture started it on: the session's.
aio = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture(scope="module")
async def launcher() -> AsyncIterator[WarmLauncher]:
    warm = WarmLauncher(runtime_env())
    assert await warm.warm() is not None, "the fork server did not start"
    yield warm
    await warm.close()


def title(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def spec(name: str, path: Path, model_type: str) -> RuntimeSpec:
    return RuntimeSpec(name, path, model_type, "cpu", 0, 0, runtime_env())


async def start(launcher: WarmLauncher, tiny_models: dict[str, Path], name: str, model_type: str) -> RuntimeHandle:
    handle = await launcher.start(spec(name, tiny_models[name], model_type))
    assert isinstance(handle, RuntimeHandle)
    return handle


@aio
async def test_two_forked_models_both_answer(launcher: WarmLauncher, tiny_models: dict[str, Path]) -> None:
    server = await launcher.warm()
    embed = await start(launcher, tiny_models, "tiny-bert-embed", "embedding")
    chat = await start(launcher, tiny_models, "tiny-llama-chat", "chat")
    try:
        await launcher.wait_ready(embed, 120)
        await launcher.wait_ready(chat, 120)
        async with httpx.AsyncClient(timeout=60) as client:
            e = await client.post(f"{embed.url}/v1/embeddings", json={"model": "tiny-bert-embed", "input": ["a", "b"]})
            body = {"model": "tiny-llama-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
            c = await client.post(f"{chat.url}/v1/chat/completions", json=body)
        assert e.status_code == 200, e.text
        assert len(e.json()["data"]) == 2
        assert c.status_code == 200, c.text
        assert c.json()["choices"][0]["finish_reason"] in ("stop", "length")
        # Forked by the fork server, each in its own process group, titled like a cold runtime.
        for handle, name in ((embed, "tiny-bert-embed"), (chat, "tiny-llama-chat")):
            assert parent_of(handle.pid) == server
            assert os.getpgid(handle.pid) == handle.pid
            assert f"--name {name}" in title(handle.pid)
        assert launcher.reserved_bytes() > 0
        # Each listens on a Unix socket of the launcher's too: the front relays through it.
        assert embed.socket is not None
        transport = httpx.AsyncHTTPTransport(uds=embed.socket)
        async with httpx.AsyncClient(transport=transport, base_url="http://runtime", timeout=60) as client:
            e = await client.post("/v1/embeddings", json={"model": "tiny-bert-embed", "input": "a"})
        assert e.status_code == 200, e.text
        assert Path(embed.socket).parent == Path(chat.socket or "").parent
    finally:
        assert await embed.stop() == -signal.SIGTERM  # uvicorn re-raises the signal after a clean shutdown
        await chat.stop()


def autogroup_nice(pid: int) -> int | None:
    """The nice value of the process's autogroup (its session), where the kernel has them."""
    try:
        return int(Path(f"/proc/{pid}/autogroup").read_text().split()[-1])
    except (OSError, ValueError, IndexError):
        return None


@aio
async def test_a_start_is_handed_to_the_spare_forked_ahead_and_a_new_spare_follows(
    tiny_models: dict[str, Path],
) -> None:
    launcher = WarmLauncher(runtime_env(), spare=True)
    await launcher.warm()
    server = launcher._live()
    assert server is not None
    await asyncio.wait_for(server.spare_made.wait(), 60)
    spare = server.spare
    assert spare is not None
    embed = await start(launcher, tiny_models, "tiny-bert-embed", "embedding")
    try:
        assert embed.pid == spare, "the start went to the spare"
        await asyncio.wait_for(server.spare_made.wait(), 60)
        assert server.spare not in (None, spare), "the next spare is forked"
        await launcher.wait_ready(embed, 120)
        async with httpx.AsyncClient(timeout=60) as client:
            e = await client.post(f"{embed.url}/v1/embeddings", json={"model": "tiny-bert-embed", "input": ["a"]})
        assert e.status_code == 200, e.text
        assert "--name tiny-bert-embed" in title(embed.pid)  # a runtime like any other now
        assert os.getpgid(embed.pid) == embed.pid  # in a session of its own, out of the server's
        assert server.pss() > 0
        if autogroup_nice(server.pid) is not None:  # the kernel weighs sessions (autogroups)
            # The spares warm up in the server's session, in the background; a runtime runs at the default.
            assert autogroup_nice(server.pid) == BACKGROUND_NICE
            assert autogroup_nice(embed.pid) == 0
    finally:
        await embed.stop()
        await launcher.close()


@aio
async def test_a_spare_that_has_warmed_up_has_the_runtimes_measured_again(tiny_models: dict[str, Path]) -> None:
    """Its warm-up copied pages it shared with the runtimes: the launcher reads its own share anew,
    then says so (the supervisor measures the ready runtimes again); each new spare does too."""
    launcher = WarmLauncher(runtime_env(), spare=True)
    shifted = asyncio.Event()
    launcher.on_shift(shifted.set)
    await launcher.warm()
    server = launcher._live()
    assert server is not None
    launcher.reserved_bytes()  # a figure to read anew
    await asyncio.wait_for(server.spare_made.wait(), 60)
    announced = time.monotonic()
    await asyncio.wait_for(shifted.wait(), 120)
    assert launcher.spare_state() == "warm"
    assert launcher._pss is not None
    assert launcher._pss[1] > announced, "its share was read after the warm-up"
    first = server.spare
    shifted.clear()
    embed = await start(launcher, tiny_models, "tiny-bert-embed", "embedding")
    try:
        assert embed.pid == first
        assert launcher.spare_state() in (None, "warming"), "the next spare has yet to warm up"
        await asyncio.wait_for(shifted.wait(), 120)
        assert launcher.spare_state() == "warm"
        assert server.spare not in (None, first)
    finally:
        await embed.stop()
        await launcher.close()


@aio
async def test_the_servers_share_is_read_again_on_a_thread_once_old(
    launcher: WarmLauncher, tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its PSS is read at once for a new server; then, once the figure is old, again on a thread
    while the figure kept stands (the read costs tens of milliseconds of CPU)."""
    launcher.reserved_bytes()
    while (reading := launcher._reading) is not None:  # a read an old figure started
        await reading
    assert launcher._pss is not None
    kept = launcher.reserved_bytes()
    assert launcher._reading is None, "a fresh figure is not read again"
    monkeypatch.setattr(warm, "PSS_MAX_AGE_S", 0.0)
    assert launcher.reserved_bytes() == kept, "the figure kept stands while it is read again"
    reading = launcher._reading
    assert reading is not None
    read_at = launcher._pss[1]
    await reading
    assert launcher._pss[1] > read_at
    server = await launcher.warm()
    assert server is not None
    assert launcher.reserved_bytes() == launcher._pss[2] > 0


@aio
async def test_model_that_cannot_load_fails_naming_the_reason(
    launcher: WarmLauncher, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    broken = tmp_path / "broken-chat"
    shutil.copytree(tiny_models["tiny-llama-chat"], broken)
    config = json.loads((broken / "config.json").read_text())
    config["intermediate_size"] *= 2  # weights that do not fit their config
    (broken / "config.json").write_text(json.dumps(config))
    handle = await launcher.start(spec("broken-chat", broken, "chat"))
    with pytest.raises(StartFailed, match=r"could not load the model: llmi runtime: loading .*broken-chat failed"):
        await launcher.wait_ready(handle, 120)
    assert await handle.stop() == 3


@aio
async def test_crashed_child_exit_code_is_reported(launcher: WarmLauncher, tiny_models: dict[str, Path]) -> None:
    handle = await start(launcher, tiny_models, "tiny-bert-embed", "embedding")
    await launcher.wait_ready(handle, 120)
    os.kill(handle.pid, signal.SIGKILL)
    assert await handle.exited == -signal.SIGKILL
    assert await handle.stop() == -signal.SIGKILL  # idempotent after the exit


@aio
async def test_stop_escalates_to_sigkill_when_sigterm_does_nothing(
    launcher: WarmLauncher, tiny_models: dict[str, Path]
) -> None:
    handle = await start(launcher, tiny_models, "tiny-bert-embed", "embedding")
    await launcher.wait_ready(handle, 120)
    os.kill(handle.pid, signal.SIGSTOP)  # a stopped process leaves SIGTERM pending, as a hung one ignores it
    assert await handle.stop(grace_s=0.5) == -signal.SIGKILL
    assert await handle.stop(grace_s=0.5) == -signal.SIGKILL


@aio
async def test_start_before_the_fork_server_is_ready_waits_for_it(tiny_models: dict[str, Path]) -> None:
    launcher = WarmLauncher(runtime_env())
    try:
        launcher.prepare()  # as `llmi serve` does when it starts serving
        handle = await start(launcher, tiny_models, "tiny-bert-embed", "embedding")
        await launcher.wait_ready(handle, 120)
        assert parent_of(handle.pid) == await launcher.warm()  # forked, not a cold start
        await handle.stop()
    finally:
        await launcher.close()


@aio
async def test_fork_server_death_is_survived(tiny_models: dict[str, Path]) -> None:
    launcher = WarmLauncher(runtime_env())
    try:
        first = await launcher.warm()
        assert first is not None
        orphan = await start(launcher, tiny_models, "tiny-bert-embed", "embedding")
        await launcher.wait_ready(orphan, 120)
        os.kill(first, signal.SIGKILL)
        # Its child dies with it (PDEATHSIG), and the launcher learns that from the broken socket.
        assert await orphan.exited == -signal.SIGKILL
        assert wait_gone(orphan.pid)
        # Meanwhile starts go cold; then a new fork server serves them again.
        meanwhile = await start(launcher, tiny_models, "tiny-bert-embed", "embedding")
        await launcher.wait_ready(meanwhile, 180)
        await meanwhile.stop()
        second = await launcher.warm()
        assert second is not None
        assert second != first
        again = await start(launcher, tiny_models, "tiny-bert-embed", "embedding")
        await launcher.wait_ready(again, 120)
        assert parent_of(again.pid) == second
        await again.stop()
    finally:
        await launcher.close()


def launcher_pids(parent: int) -> list[int]:
    """Fork servers whose title names ``parent`` as their llmi serve."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if title.startswith(f"llmi runtime-launcher --parent-pid {parent}"):
                found.append(int(entry.name))
    return found


@pytest.mark.parametrize("warm", ["true", "false"])
def test_sigkill_of_serve_leaves_no_process_behind(tiny_models: dict[str, Path], tmp_path: Path, warm: str) -> None:
    models = model_folder(tiny_models, tmp_path / "models", ["tiny-bert-embed"])
    server = start_serve(models, tmp_path, env=runtime_env(LLM_WARM_RUNTIMES=warm))
    try:
        r = httpx.post(f"{server.url}/v1/embeddings", json={"model": "tiny-bert-embed", "input": "x"}, timeout=180)
        assert r.status_code == 200, r.text
        runtimes = server.runtime_pids("tiny-bert-embed")
        assert len(runtimes) == 1
        forkservers = launcher_pids(server.proc.pid)
        assert len(forkservers) == (1 if warm == "true" else 0)
        assert parent_of(runtimes[0]) == (forkservers[0] if forkservers else server.proc.pid)
    finally:
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait()
    for pid in [*runtimes, *forkservers]:
        assert wait_gone(pid), f"process {pid} outlived llmi serve"
    assert server.runtime_pids() == []


@aio
@pytest.mark.parametrize("name", sorted(TINY_TYPES))
async def test_a_forked_runtimes_estimate_is_near_its_pss(
    launcher: WarmLauncher, tiny_models: dict[str, Path], name: str
) -> None:
    """Issue 8, acceptance 4, for runtimes as `llmi serve` starts them: forked from the fork server."""
    handle = await start(launcher, tiny_models, name, TINY_TYPES[name])
    try:
        await launcher.wait_ready(handle, 120)
        measured = await launcher.measure(handle)
        pss = pss_bytes(handle.pid)
        catalog = scan(
            tiny_models[name].parent, max_model_len=Settings().vllm_max_model_len, device="cpu", launch="forked"
        )
        entry = catalog.get(name)
        assert entry is not None
        assert measured is not None
        figures = {"pss": pss, "measured": measured, "estimate": entry.memory_bytes}
        print(name, {k: f"{v / 2**20:.0f} MiB" for k, v in figures.items()})
        assert abs(measured - pss) <= 0.10 * pss
        assert abs(entry.memory_bytes - pss) <= 0.25 * pss
    finally:
        await handle.stop()
