"""Import rules of ARCHITECTURE.md, checked in fresh interpreters."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)


def test_shared_package_imports_no_torch_or_kubernetes() -> None:
    out = python(
        "import sys, llmi.cli, llmi.web, llmi.settings, llmi.catalog.classify, llmi.runtime_args\n"
        "import llmi.protocol.chat, llmi.protocol.embeddings, llmi.protocol.rerank, llmi.protocol.vision\n"
        "llmi.cli.build_parser()\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'transformers', 'kubernetes', 'kopf'})\n"
        "print(heavy)"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_protocol_modules_import_only_pydantic() -> None:
    out = python(
        "import sys; before = set(sys.modules)\n"
        "import llmi.protocol.chat, llmi.protocol.embeddings, llmi.protocol.rerank, llmi.protocol.vision\n"
        "new = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        "print(sorted(new & {'fastapi', 'starlette', 'torch', 'httpx', 'uvicorn'}))"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_repository_root_does_not_shadow_the_standard_library() -> None:
    out = python("import operator, os; print(operator.__file__)")
    assert out.returncode == 0, out.stderr
    assert not out.stdout.strip().startswith(str(ROOT))
    for folder in ROOT.iterdir():
        if folder.is_dir() and folder.name in sys.stdlib_module_names:
            assert not (folder / "__init__.py").exists(), folder


def test_control_plane_dependencies_exclude_torch() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = " ".join(project["dependencies"]).lower()
    assert "torch" not in base
    assert "transformers" not in base
    assert any(dep.startswith("torch") for dep in project["optional-dependencies"]["runtime"])
