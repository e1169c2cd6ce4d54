"""The tree keeps its layers (docs/architecture.md), read from the source itself.

import-linter checks the same contracts in CI on the installed layout; this test needs nothing
but the files, so it runs with the suite everywhere (Windows included) and fails with the file
and line of the offending import.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("app", "bots", "backends", "storage", "core")
# What each layer may import of ours. bots, backends and storage never import each other.
ALLOWED = {
    "app": set(LAYERS),
    "bots": {"bots", "core"},
    "backends": {"backends", "core"},
    "storage": {"storage", "core"},
    "core": {"core"},
}
# The engine stays free of I/O libraries: no HTTP client, platform SDK, database or parser.
CORE_FORBIDDEN = {"aiohttp", "httpx", "discord", "telegram", "aiosqlite", "sqlite3", "asyncpg",
                  "dotenv", "psutil", "markdown_it"}


def imports(path: Path, layer: str) -> Iterator[tuple[int, str]]:
    """(line, absolute module) for every import in ``path``; relative imports resolved
    against the installed name (``rtxrelay.<layer>.<sub packages>``)."""
    package = ["rtxrelay", layer, *path.relative_to(ROOT / layer).parent.parts]
    if path.parent == ROOT / "app" / "_root":
        package = ["rtxrelay"]  # the root package's own files
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                yield node.lineno, ".".join([*base, *([node.module] if node.module else [])])
            elif node.module:
                yield node.lineno, node.module


def violations(path: Path, layer: str) -> list[str]:
    found = []
    for line, module in imports(path, layer):
        parts = module.split(".")
        where = f"{path.relative_to(ROOT)}:{line} imports {module}"
        if parts[0] == "rtxrelay" and len(parts) > 1:
            if parts[1] in LAYERS and parts[1] not in ALLOWED[layer]:
                found.append(where)
        elif layer == "core" and parts[0] in CORE_FORBIDDEN:
            found.append(where)
    return found


def layer_files() -> Iterator[tuple[Path, str]]:
    for layer in LAYERS:
        for path in sorted((ROOT / layer).rglob("*.py")):
            yield path, layer


def test_every_import_keeps_to_its_layer() -> None:
    files = list(layer_files())
    assert len(files) > 30 and {layer for _, layer in files} == set(LAYERS)
    assert [v for path, layer in files for v in violations(path, layer)] == []


@pytest.mark.parametrize(("layer", "source", "bad"), [
    ("core", "import aiohttp", True),
    ("core", "from rtxrelay.storage.sqlite_store import SqliteStore", True),
    ("core", "from ..bots import PLATFORMS", True),
    ("core", "from .errors import ConfigError", False),
    ("bots", "from rtxrelay.backends.chatrtx import backend", True),
    ("storage", "from rtxrelay.app.settings import Settings", True),
    ("backends", "import aiohttp\nfrom rtxrelay.core.errors import BackendError", False),
])
def test_the_check_sees_a_wrong_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       layer: str, source: str, bad: bool) -> None:
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    module = tmp_path / layer / "module.py"
    module.parent.mkdir()
    module.write_text(source)
    assert bool(violations(module, layer)) is bad


def test_no_reference_to_documents_outside_the_repository() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    offenders = [name for name in tracked if name.endswith((".py", ".md", ".toml"))
                 and "shared/" "research" in (ROOT / name).read_text(encoding="utf-8")]
    assert offenders == []


def test_python_dash_m_rtxrelay_is_the_command() -> None:
    result = subprocess.run([sys.executable, "-m", "rtxrelay", "--help"], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "{ask,chat,doctor,discover,chatrtx-bridge,run,serve,service}" in result.stdout


def test_the_wheel_installs_one_package_named_rtxrelay(tmp_path: Path) -> None:
    """A user's site-packages gets ``rtxrelay`` and nothing called ``core`` or ``storage``."""
    import zipfile

    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("rtxrelay-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {"rtxrelay", wheel.name.split("-py")[0]
                                                      + ".dist-info"}
    for module in ("__main__.py", "app/cli.py", "bots/__init__.py", "core/streaming.py",
                   "backends/chatrtx/backend.py", "storage/sqlite_store.py"):
        assert f"rtxrelay/{module}" in names
    assert not [name for name in names if "/_root/" in name or "/tests/" in name]
