"""Build the replica's per-variant venvs (stdlib only).

The main project venv must never need Gradio, so every replica variant runs from its own
venv under tests/replica/.venvs/<variant>/ (gitignored). ``ensure_env`` builds it once and
returns its python; a marker file records the pins so a changed pin rebuilds it.

Concurrency: a build happens in a private temp directory next to the target and is moved
into place with one atomic rename, so two processes (pytest workers, a developer's shell)
calling ``ensure_env`` at once never see a half-built venv: the loser of the race finds a
complete env with the right marker and uses it. No lock file, so a killed build leaves no
stale lock behind — only a ``.build-*`` directory, which the next build sweeps up.

CLI: ``python tests/replica/envs.py [variant ...|--all] [--force]``
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

if __package__:
    from .variants import REQUIRED_VARIANTS, VARIANTS, Variant, get_variant
else:  # run as a script: tests/replica is sys.path[0]
    from variants import REQUIRED_VARIANTS, VARIANTS, Variant, get_variant

REPLICA_DIR = Path(__file__).resolve().parent
VENVS_DIR = REPLICA_DIR / ".venvs"
MARKER_NAME = "replica-env.json"
# One install step; a cold 4.x/5.x install downloads ~100 MB, warm uv cache takes seconds.
STEP_TIMEOUT = 900.0
# A .build-* directory older than this belongs to a dead build and may be removed.
_STALE_BUILD_SECONDS = 2 * STEP_TIMEOUT


class EnvBuildError(RuntimeError):
    """Creating or populating a replica venv failed; the message carries the tool output."""


def venv_python(venv_dir: Path) -> Path:
    """The interpreter inside a venv; its place differs on Windows."""
    if os.name == "nt":
        return venv_dir / "Scripts" / "python.exe"
    return venv_dir / "bin" / "python"


def env_dir(variant: str | Variant) -> Path:
    return VENVS_DIR / get_variant(variant).name


def _wanted_marker(variant: Variant) -> dict[str, object]:
    # The base interpreter's minor version matters too: wheels are per-Python.
    return {
        "variant": variant.name,
        "requirements": list(variant.requirements),
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
    }


def _is_ready(venv_dir: Path, variant: Variant) -> bool:
    marker = venv_dir / MARKER_NAME
    try:
        found = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return found == _wanted_marker(variant) and venv_python(venv_dir).exists()


def _uv_command() -> list[str] | None:
    """How to run uv: the module from this venv (a dev dependency), else a uv on PATH."""
    if importlib.util.find_spec("uv") is not None:
        return [sys.executable, "-m", "uv"]
    found = shutil.which("uv")
    return [found] if found else None


def _run(cmd: list[str], timeout: float) -> None:
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise EnvBuildError(f"timed out after {timeout:.0f}s: {' '.join(cmd)}") from exc
    if done.returncode != 0:
        tail = (done.stdout + done.stderr)[-4000:]
        raise EnvBuildError(f"exit {done.returncode}: {' '.join(cmd)}\n{tail}")


def _build(target: Path, variant: Variant, timeout: float) -> None:
    """Create a venv at ``target`` (a fresh path) and install the variant's pins."""
    uv = _uv_command()
    python = venv_python(target)
    if uv is not None:
        # --relocatable: the venv is built under a temp name and renamed afterwards.
        _run([*uv, "venv", "--quiet", "--relocatable", "--python", sys.executable,
              str(target)], timeout)
        _run([*uv, "pip", "install", "--quiet", "--python", str(python),
              *variant.requirements], timeout)
    else:
        _run([sys.executable, "-m", "venv", str(target)], timeout)
        _run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
              *variant.requirements], timeout)
    # Written last: its presence means the venv is complete.
    marker = json.dumps(_wanted_marker(variant), indent=2)
    (target / MARKER_NAME).write_text(marker, encoding="utf-8")


def _sweep_dead_builds() -> None:
    now = time.time()
    for leftover in VENVS_DIR.glob(".build-*"):
        try:
            if now - leftover.stat().st_mtime > _STALE_BUILD_SECONDS:
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            pass
    for old in VENVS_DIR.glob(".old-*"):
        shutil.rmtree(old, ignore_errors=True)


def ensure_env(variant: str | Variant, *, force: bool = False,
               timeout: float = STEP_TIMEOUT) -> Path:
    """Return the python of the variant's venv, building the venv first if needed.

    Idempotent and safe to call from several processes at once (see module docstring).
    ``timeout`` bounds each install step. Raises EnvBuildError on failure.
    """
    v = get_variant(variant)
    final = env_dir(v)
    if not force and _is_ready(final, v):
        return venv_python(final)

    VENVS_DIR.mkdir(parents=True, exist_ok=True)
    _sweep_dead_builds()
    staging = VENVS_DIR / f".build-{v.name}-{uuid.uuid4().hex[:8]}"
    try:
        _build(staging, v, timeout)
        # Someone else may have finished first while we built: then theirs wins.
        if not force and _is_ready(final, v):
            return venv_python(final)
        if final.exists():
            # Move the outdated env aside atomically, then delete it at leisure.
            retired = VENVS_DIR / f".old-{v.name}-{uuid.uuid4().hex[:8]}"
            try:
                final.rename(retired)
            except OSError:
                if _is_ready(final, v):
                    return venv_python(final)
                raise
            shutil.rmtree(retired, ignore_errors=True)
        try:
            staging.rename(final)
        except OSError:
            # Lost the race to a concurrent builder that renamed its env in first.
            if _is_ready(final, v):
                return venv_python(final)
            raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return venv_python(final)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the Chat with RTX replica venvs.")
    parser.add_argument("variants", nargs="*", help=f"default: {' '.join(REQUIRED_VARIANTS)}")
    parser.add_argument("--all", action="store_true", help="every known variant")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args(argv)
    names = list(VARIANTS) if args.all else (args.variants or list(REQUIRED_VARIANTS))
    failed = 0
    for name in names:
        started = time.monotonic()
        try:
            python = ensure_env(name, force=args.force)
        except (EnvBuildError, KeyError) as exc:
            failed += 1
            print(f"{name}: FAILED after {time.monotonic() - started:.1f}s\n{exc}",
                  file=sys.stderr)
            continue
        print(f"{name}: {python} ({time.monotonic() - started:.1f}s)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
