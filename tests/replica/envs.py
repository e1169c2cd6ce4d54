"""Build the replica's per-variant venvs (stdlib only).

The main project venv must never need Gradio, so every replica variant runs from its own
venv under tests/replica/.venvs/<variant>-py3.X/ (gitignored), one per Python minor version
of the interpreter building it (wheels, and on 3.13+ some pins, are per-Python), so a 3.11
and a 3.13 project venv share the folder without rebuilding each other's replica venvs.
``ensure_env`` builds one once and returns its python; a marker file records the pins so a
changed pin rebuilds it.
A build reports its steps through ``progress`` (the CLI and serve.py print them): a cold one
downloads ~100 MB, so a silent minute would look like a hang.

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
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO

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
# The Python running us (and so building and running the replica venvs), as (major, minor).
PYTHON = (sys.version_info.major, sys.version_info.minor)

Progress = Callable[[str], None]


class EnvBuildError(RuntimeError):
    """Creating or populating a replica venv failed; the message carries the tool output."""


def venv_python(venv_dir: Path) -> Path:
    """The interpreter inside a venv; its place differs on Windows."""
    if os.name == "nt":
        return venv_dir / "Scripts" / "python.exe"
    return venv_dir / "bin" / "python"


def env_dir(variant: str | Variant) -> Path:
    # The base interpreter's minor version matters too: wheels (and, on 3.13+, the pins)
    # are per-Python, so each minor version gets its own venv.
    return VENVS_DIR / f"{get_variant(variant).name}-py{PYTHON[0]}.{PYTHON[1]}"


def _wanted_marker(variant: Variant) -> dict[str, object]:
    return {
        "variant": variant.name,
        "requirements": list(variant.requirements),
        "overrides": list(variant.overrides(PYTHON)),
        "python": f"{PYTHON[0]}.{PYTHON[1]}",
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


def _quiet(line: str) -> None:
    pass


def _worth_showing(line: str) -> bool:
    # uv's one line per installed package, and the temp path it installs into, are noise.
    return bool(line.strip()) and not line.startswith((" + ", " - ", " ~ ", "Using Python "))


def _run(cmd: list[str], timeout: float, progress: Progress = _quiet) -> None:
    """Run one build step; its output lines go to ``progress`` as they come.

    Noise (see ``_worth_showing``) is left out of the progress, not of the error report: on
    failure the message carries the tail of the whole output. A thread reads the output, so
    the timeout holds even if a killed step leaves a child holding the pipe open.
    """
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        text=True, encoding="utf-8", errors="replace",
    )
    lines: list[str] = []

    def pump(stream: IO[str]) -> None:
        for raw in stream:
            line = raw.rstrip()
            lines.append(line)
            del lines[:-200]
            if _worth_showing(line):
                progress(line.strip())

    assert proc.stdout is not None
    reader = threading.Thread(target=pump, args=(proc.stdout,), daemon=True)
    reader.start()
    timed_out = False
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        if proc.poll() is None:  # timed out, or interrupted (Ctrl-C)
            proc.kill()
            code = proc.wait()
        reader.join(10.0)
        if not reader.is_alive():
            proc.stdout.close()
    if timed_out:
        raise EnvBuildError(f"timed out after {timeout:.0f}s: {' '.join(cmd)}")
    if code != 0:
        tail = "\n".join(lines)[-4000:]
        raise EnvBuildError(f"exit {code}: {' '.join(cmd)}\n{tail}")


def _build(target: Path, variant: Variant, timeout: float, progress: Progress) -> None:
    """Create a venv at ``target`` (a fresh path) and install the variant's pins."""
    uv = _uv_command()
    python = venv_python(target)
    overrides = variant.overrides(PYTHON)
    pins = f"gradio {variant.gradio} and {len(variant.requirements) - 1} pins"
    if uv is not None:
        # --relocatable: the venv is built under a temp name and renamed afterwards.
        _run([*uv, "venv", "--quiet", "--relocatable", "--python", sys.executable,
              str(target)], timeout, progress)
        cmd = [*uv, "pip", "install", "--python", str(python), *variant.requirements]
        if overrides:
            # Replaces what gradio itself declares (pip has no equivalent).
            override_file = target / "replica-overrides.txt"
            override_file.write_text("\n".join(overrides) + "\n", encoding="utf-8")
            cmd += ["--overrides", str(override_file)]
            pins += f", overriding {', '.join(overrides)}"
        progress(f"installing {pins} with uv")
        _run(cmd, timeout, progress)
    else:
        if overrides:
            raise EnvBuildError(
                f"the gradio {variant.gradio} replica on Python {PYTHON[0]}.{PYTHON[1]} needs "
                f"uv (it overrides {', '.join(overrides)}, which pip cannot): "
                f"{sys.executable} -m pip install uv"
            )
        _run([sys.executable, "-m", "venv", str(target)], timeout, progress)
        progress(f"installing {pins} with pip (no uv found: this takes minutes)")
        _run([str(python), "-m", "pip", "install", "--disable-pip-version-check",
              "--progress-bar", "off", *variant.requirements], timeout, progress)
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
               timeout: float = STEP_TIMEOUT, progress: Progress | None = None) -> Path:
    """Return the python of the variant's venv, building the venv first if needed.

    Idempotent and safe to call from several processes at once (see module docstring).
    ``timeout`` bounds each install step. ``progress`` gets one line per build step (and
    the installer's own lines); nothing when the venv is already there. Raises
    EnvBuildError on failure.
    """
    v = get_variant(variant)
    final = env_dir(v)
    if not force and _is_ready(final, v):
        return venv_python(final)

    VENVS_DIR.mkdir(parents=True, exist_ok=True)
    _sweep_dead_builds()
    staging = VENVS_DIR / f".build-{final.name}-{uuid.uuid4().hex[:8]}"
    report = progress or _quiet
    started = time.monotonic()
    report(f"Building the gradio {v.gradio} replica's venv for Python {PYTHON[0]}.{PYTHON[1]} "
           f"in {final} (first run only; a cold download is ~100 MB)")
    try:
        _build(staging, v, timeout, report)
        report(f"Built the gradio {v.gradio} venv in {time.monotonic() - started:.0f} s")
        # Someone else may have finished first while we built: then theirs wins.
        if not force and _is_ready(final, v):
            return venv_python(final)
        if final.exists():
            # Move the outdated env aside atomically, then delete it at leisure.
            retired = VENVS_DIR / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
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


def print_progress(line: str) -> None:
    """A ``progress`` for people: each line on stderr, prefixed so it reads as ours."""
    print(f"  [replica venv] {line}", file=sys.stderr, flush=True)


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
            python = ensure_env(name, force=args.force, progress=print_progress)
        except (EnvBuildError, KeyError) as exc:
            failed += 1
            print(f"{name}: FAILED after {time.monotonic() - started:.1f}s\n{exc}",
                  file=sys.stderr)
            continue
        print(f"{name}: {python} ({time.monotonic() - started:.1f}s)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
