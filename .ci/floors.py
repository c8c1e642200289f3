"""CI: the HTTP client stack at the lowest versions pyproject.toml allows, against the HTTP tests.

hubtree imports huggingface_hub and httpx2 (the Hub client) and starlette and uvicorn
(``hub serve``) directly, and their APIs move fastest, so their floors are what a
user's older install would run. They (and the exact pins they carry, such as httpx2's
httpcore2) are installed into a separate folder put first on PYTHONPATH, over the test
venv, so nothing else is installed twice. Cheap: a few small wheels and the HTTP tests
(about a minute).

    .venv/bin/python .ci/floors.py
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("huggingface_hub", "httpx2", "starlette", "uvicorn")
TESTS = ["tests/test_http_hub.py", "tests/test_retry.py", "tests/test_hub_server.py"]


def floors() -> list[str]:
    """``name==floor`` for PACKAGES, from their ``>=`` bound in pyproject.toml."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = []
    for name in PACKAGES:
        spec = next(d for d in deps if re.split(r"[<>=!~\[ ;]", d, maxsplit=1)[0].lower().replace("-", "_") == name)
        floor = re.search(r">=\s*([\w.]+)", spec).group(1)
        pins.append(f"{name}=={floor}")
    return pins


def pip(target: Path, *requirements: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), *requirements], check=True)


def main() -> int:
    target = Path(tempfile.mkdtemp(prefix="hubtree-floors-"))
    pins = floors()
    pip(target, *pins)
    exact = set()  # what the floors pin exactly (httpx2 pins httpcore2): it must come with them
    for metadata in target.glob("*.dist-info/METADATA"):
        for line in metadata.read_text().splitlines():
            if (m := re.match(r"Requires-Dist: ([\w.-]+)\s*\(?==\s*([\w.]+)\)?\s*$", line)):
                exact.add(f"{m.group(1)}=={m.group(2)}")
    if exact:
        pip(target, *sorted(exact))
    print(f"floors: {' '.join(pins + sorted(exact))}", flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    check = "import huggingface_hub, httpx2; print('running the HTTP tests on huggingface_hub', huggingface_hub.__version__, 'httpx2', httpx2.__version__)"
    subprocess.run([sys.executable, "-c", check], env=env, check=True, cwd=ROOT)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS], env=env, cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main())
