"""What a spare runtime does while it waits: the start-up every runtime runs before its model
matters (``start_up``), and the load of a model of a few kilobytes that it then drops (``load``).

Why the load: a forked runtime's first load pays about 25 ms (2 cores) that a second load in the same
process does not: the first use in the child of transformers', safetensors' and tokenizers' code
(their caches filled, their pages copied from the fork server). It hardly depends on the model
(a chat model's load takes it off an embedding model's and back), so a spare pays it, while it
waits, with this model, built once per fork server by its first spare.

The load is skipped where an NVIDIA driver is present: a spare must not reach CUDA before it has the
runtime's environment (``CUDA_VISIBLE_DEVICES``), and a load asks whether CUDA is available.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

WORDS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "model", "warms", "up")
NVIDIA_DRIVER = Path("/dev/nvidiactl")


def start_up() -> None:
    """Run once what every runtime runs before its model matters (the parser, the settings, the
    server's config), so the real start finds caches filled and pages already copied: 24 ms of
    those took 11 ms the second time in a forked child."""
    with contextlib.suppress(Exception, SystemExit):
        import uvicorn

        from llmi.cli import build_parser
        from llmi.settings import Settings
        from llmi_runtime.http_protocol import OneWriteHttpToolsProtocol

        argv = ["runtime", "--model", os.devnull, "--port", "0"]
        build_parser(argv).parse_args(argv)
        Settings()
        uvicorn.Config(None, loop="asyncio", ws="none", http=OneWriteHttpToolsProtocol, port=0, log_level="error")  # type: ignore[arg-type]
        import torch

        with torch.inference_mode():  # the CPU thread pool and kernels' first-call set-up (never CUDA)
            x = torch.randn(8, 16, 64)
            torch.nn.functional.scaled_dot_product_attention(x, x, x)
            torch.nn.functional.layer_norm(torch.nn.functional.linear(x, torch.randn(64, 64)).softmax(-1), (64,))


def build(folder: Path) -> None:
    """A one-layer BERT with a WordPiece vocabulary of the words above, with mean pooling, saved
    as sentence-transformers saves (the path a real embedder loads by) to ``folder``: whole or
    not at all (built beside it, then renamed)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    building = folder.with_name(f"{folder.name}.{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    stage = building / "backbone"
    stage.mkdir(parents=True)
    BertTokenizerFast(vocab={w: i for i, w in enumerate(WORDS)}).save_pretrained(stage)
    config = BertConfig(
        vocab_size=len(WORDS),
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=1,
        intermediate_size=16,
        max_position_embeddings=16,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(stage)
    transformer = Transformer(str(stage), max_seq_length=16)
    model = SentenceTransformer(modules=[transformer, Pooling(8, pooling_mode="mean")], device="cpu")
    model.save_pretrained(str(building / "model"), create_model_card=False)
    with contextlib.suppress(OSError):  # built meanwhile by another: theirs serves as well
        os.rename(building / "model", folder)
    shutil.rmtree(building, ignore_errors=True)


def load(root: Path, stop: Callable[[], bool] = lambda: False) -> bool:
    """Load the rehearsal model from ``root`` (building it first if needed) and embed one text;
    whether it ran to the end. ``stop`` is asked between the steps: true ends it there."""
    if NVIDIA_DRIVER.exists() or stop():
        return False
    from transformers.utils import logging as hf_logging

    from llmi_runtime.engines.base import LoadOptions
    from llmi_runtime.engines.embedding import EmbeddingEngine

    folder = root / "model"
    # Quiet: its log lines and progress bars would reach the launcher's log at every switch.
    logging.disable(logging.WARNING)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        if not (folder / "config.json").is_file():
            build(folder)
            if stop():
                return False
        engine = EmbeddingEngine(folder, LoadOptions(device="cpu", placement="cpu"))
        if stop():
            return False
        engine.forward(engine.prepare(["a model warms up"]))
    finally:
        logging.disable(logging.NOTSET)
        if bars:
            hf_logging.enable_progress_bar()
    return True
