"""The README's first command, as a new user runs it: the replica starts (its Gradio venv
built with progress shown) and `rtxrelay chat` answers a line typed into it."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from tests.replica import envs, fake_model

REPO = Path(__file__).resolve().parents[2]


async def test_serve_chat_answers_a_line(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(REPO / "tests" / "replica" / "serve.py"), "--chat",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, cwd=tmp_path,
        env={**os.environ, "RTXRELAY_DB": str(tmp_path / "r.db"), "PYTHONIOENCODING": "utf-8"})
    try:
        async with asyncio.timeout(300):
            out, err = await proc.communicate(b"hello there\n")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    assert fake_model.answer_text("hello there", []).strip() in out.decode()


def test_building_a_replica_env_reports_each_step(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A first build downloads Gradio: the user sees it move, not a silent minute."""
    monkeypatch.setattr(envs, "VENVS_DIR", tmp_path / ".venvs")
    lines: list[str] = []
    python = envs.ensure_env("4.26", progress=lines.append)
    assert python.is_file() and python.is_relative_to(tmp_path)
    assert lines, "no progress was reported"
    assert any("gradio" in line.lower() for line in lines), lines
    assert envs.ensure_env("4.26", progress=lines.append) == python  # built once
