"""Packed linear weights: the same numbers as nn.Linear, only where packing is safe, done after
the model is ready on the model's own thread."""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

from llmi.modeltypes import ModelType
from llmi.settings import Settings
from llmi_runtime.engines.base import LoadOptions
from llmi_runtime.engines.packed_linear import (
    FileMappedPages,
    PackedLinear,
    Progress,
    available,
    pack_steps,
    packable,
)
from llmi_runtime.state import Phase, RuntimeState
from llmi_runtime.worker import PASS

pytestmark = pytest.mark.skipif(not available(), reason="this torch build has no oneDNN")
TEXTS = ["a quick brown fox", "jumps over the lazy dog", "hello"]


def packed_all(model: nn.Module) -> Progress:
    progress = Progress()
    steps = list(pack_steps(model, progress))
    assert steps == [PASS] * progress.total  # one layer per worker turn
    return progress


def test_a_packed_encoder_gives_the_same_vectors_and_fuses_its_gelus(tiny_models: dict[str, Path]) -> None:
    path = tiny_models["tiny-bert-embed"]
    reference = SentenceTransformer(str(path), device="cpu").encode(TEXTS)
    model = SentenceTransformer(str(path), device="cpu")
    layers = model[0].auto_model.config.num_hidden_layers
    progress = packed_all(model)
    assert progress.packed == progress.total == 6 * layers + 1  # q k v o, up, down per layer; the pooler
    assert progress.fused == layers  # every BertIntermediate's GELU
    assert not any(type(m) is nn.Linear for m in model.modules())
    assert np.abs(model.encode(TEXTS) - reference).max() <= 1e-5


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-dinov2"])
def test_a_packed_vision_model_gives_the_same_features(tiny_models: dict[str, Path], name: str) -> None:
    model = AutoModel.from_pretrained(tiny_models[name]).eval()
    pixels = torch.randn(
        2, 3, model.config.image_size, model.config.image_size, generator=torch.Generator().manual_seed(1)
    )
    with torch.inference_mode():
        reference = model(pixel_values=pixels).last_hidden_state
    progress = packed_all(model)
    assert progress.fused == model.config.num_hidden_layers
    with torch.inference_mode():
        assert torch.allclose(model(pixel_values=pixels).last_hidden_state, reference, atol=1e-5)


def test_a_packed_chat_model_generates_the_same_tokens_and_keeps_its_tied_head(tiny_models: dict[str, Path]) -> None:
    path = tiny_models["tiny-llama-chat"]
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    assert model.config.tie_word_embeddings
    ids = tok(["the quick brown fox", "jumps over"], return_tensors="pt", padding=True)
    with torch.no_grad():
        reference = model.generate(**ids, do_sample=False, max_new_tokens=16, pad_token_id=tok.pad_token_id)
    progress = packed_all(model)
    assert progress.packed == 7 * model.config.num_hidden_layers  # q k v o, gate up down; not lm_head
    assert type(model.lm_head) is nn.Linear
    assert model.lm_head.weight is model.get_input_embeddings().weight
    with torch.no_grad():
        out = model.generate(**ids, do_sample=False, max_new_tokens=16, pad_token_id=tok.pad_token_id)
    assert torch.equal(out, reference)


class AddsBeforeActivating(nn.Module):
    """Named like a BERT intermediate, but its forward is not act(dense(x))."""

    def __init__(self) -> None:
        super().__init__()
        self.dense = nn.Linear(8, 16)
        self.intermediate_act_fn = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.intermediate_act_fn(self.dense(x) + 1.0)


class Intermediate(nn.Module):
    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.dense = nn.Linear(8, 16)
        self.intermediate_act_fn = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.intermediate_act_fn(self.dense(x))


@pytest.mark.parametrize(
    ("module", "fused"),
    [
        (Intermediate(nn.GELU()), "gelu"),
        (Intermediate(nn.GELU(approximate="tanh")), "gelu_tanh"),
        (Intermediate(nn.SiLU()), "none"),  # not a GELU
        (AddsBeforeActivating(), "none"),  # the probe sees a different output
    ],
)
def test_an_activation_is_fused_only_where_the_output_stays_the_same(module: nn.Module, fused: str) -> None:
    x = torch.randn(3, 5, 8, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        reference = module(x)
    packed_all(module)
    assert isinstance(module.dense, PackedLinear)
    assert module.dense.activation == fused
    assert isinstance(module.intermediate_act_fn, nn.Identity) == (fused != "none")
    with torch.inference_mode():
        assert torch.allclose(module(x), reference, atol=1e-5)


def test_only_plain_float32_unshared_unhooked_linears_are_packed() -> None:
    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.plain = nn.Linear(4, 4)
            self.shared_a = nn.Linear(4, 4)
            self.shared_b = nn.Linear(4, 4)
            self.shared_b.weight = self.shared_a.weight
            self.half = nn.Linear(4, 4).to(torch.bfloat16)
            self.hooked = nn.Linear(4, 4)
            self.hooked.register_forward_hook(lambda *_: None)
            self.subclass = type("QuantLinear", (nn.Linear,), {})(4, 4)

    model = Model()
    assert [name for _, name in packable(model)] == ["plain"]


async def test_a_cpu_runtime_packs_after_it_is_ready_and_says_so(tiny_models: dict[str, Path]) -> None:
    path = tiny_models["tiny-bert-embed"]
    state = RuntimeState("m", ModelType.EMBEDDING, path, LoadOptions(device="cpu"), Settings())
    try:
        await state.load()
        assert state.phase is Phase.READY
        assert state.packing is not None
        assert state.packing.packed == state.packing.total > 0
        assert state.health()["packed_weights"]["packed"] == state.packing.total
        got = torch.stack(state.engine.forward(state.engine.prepare(TEXTS))).numpy()
        assert np.abs(got - SentenceTransformer(str(path), device="cpu").encode(TEXTS)).max() <= 1e-5
        assert state.health()["parameters"] == sum(
            p.numel() for p in SentenceTransformer(str(path), device="cpu").parameters()
        )
    finally:
        state.close()


@pytest.mark.parametrize(
    ("settings", "options"),
    [
        (Settings(cpu_packed_weights=False), LoadOptions(device="cpu")),
        # A model's own code may read a linear's weight as a plain tensor.
        (Settings(), LoadOptions(device="cpu", trust_remote_code=True)),
    ],
    ids=["turned-off", "remote-code"],
)
async def test_packing_is_skipped_when_off_or_for_remote_code(
    tiny_models: dict[str, Path], settings: Settings, options: LoadOptions
) -> None:
    state = RuntimeState("m", ModelType.EMBEDDING, tiny_models["tiny-bert-embed"], options, settings)
    try:
        await state.load()
        assert state.phase is Phase.READY
        assert state.packing is None
        assert "packed_weights" not in state.health()
        assert any(type(m) is nn.Linear for m in state.engine.model.modules())
    finally:
        state.close()


def file_mapped(path: Path, rows: int = 256) -> torch.Tensor:
    """A float32 tensor mapped privately from a file, as a float32 checkpoint's weights are."""
    values = torch.arange(rows * rows, dtype=torch.float32)
    path.write_bytes(values.numpy().tobytes())
    storage = torch.UntypedStorage.from_file(str(path), shared=False, nbytes=values.numel() * 4)
    return torch.tensor([], dtype=torch.float32).set_(storage).view(rows, rows)


def test_a_packed_weights_file_pages_are_dropped_only_when_nothing_else_uses_them(tmp_path: Path) -> None:
    weight = file_mapped(tmp_path / "w.bin")
    shared = FileMappedPages.of_this_process([weight, weight[:1]])
    assert shared.release(weight) == 0  # a live view shares the bytes
    anonymous = torch.zeros(256, 256)
    assert FileMappedPages.of_this_process([anonymous]).release(anonymous) == 0  # not mapped from a file
    dropped = FileMappedPages.of_this_process([weight]).release(weight)
    assert dropped >= 256 * 256 * 4 - 2 * FileMappedPages.PAGE
    assert torch.equal(weight.flatten(), torch.arange(256 * 256, dtype=torch.float32))  # read back from the file


def test_packing_a_file_mapped_model_does_not_keep_its_weights_twice(tmp_path: Path) -> None:
    """As a float32 checkpoint is loaded: one private mapping of the file, which stays mapped while
    any of its tensors lives (here the second layer), each tensor a storage of its own in it."""
    path = tmp_path / "model.bin"
    n = 256 * 256
    path.write_bytes(torch.arange(2 * n, dtype=torch.float32).numpy().tobytes())
    with path.open("r+b") as f:
        mapping = mmap.mmap(f.fileno(), 8 * n, flags=mmap.MAP_PRIVATE)
    first = torch.frombuffer(mapping, dtype=torch.float32, count=n).view(256, 256)
    second = torch.frombuffer(mapping, dtype=torch.float32, count=n, offset=4 * n).view(256, 256)
    model = nn.Sequential(nn.Linear(256, 256, bias=False), nn.Linear(256, 256, bias=False))
    model[0].weight = nn.Parameter(first, requires_grad=False)
    model[1].weight = nn.Parameter(second.to(torch.bfloat16), requires_grad=False)  # not packed
    model[1].register_buffer("kept", second)  # the mapping's other half stays in use
    del first, second
    assert int(model[0].weight.sum()) > 0  # every page read, as a forward would

    def resident_kib() -> int:
        """Resident KiB of this process's mappings of the file (smaps)."""
        total, inside = 0, False
        for line in Path("/proc/self/smaps").read_text().splitlines():
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5:
                inside = head[-1] == str(path)
            elif inside and line.startswith("Rss:"):
                total += int(head[1])
        return total

    before = resident_kib()
    assert before >= 256
    progress = packed_all(model)
    assert progress.packed == 1
    assert isinstance(model[0], PackedLinear)
    assert before - resident_kib() >= 256 - 8  # the first layer's pages, bar the partial ones at its ends
    assert torch.equal(model[1].kept.flatten(), torch.arange(n, 2 * n, dtype=torch.float32))
