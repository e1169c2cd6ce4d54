"""Errors point at the real fix: the wrong scheme, the CA file, and no secret echoed."""

from __future__ import annotations

import io
from pathlib import Path

from rtxrelay.app.doctor import run_doctor
from rtxrelay.app.settings import load_settings
from tests.app.test_cli import run_cli
from tests.replica.launcher import Replica, free_port


async def doctor(tmp_path: Path, **env: str) -> str:
    out = io.StringIO()
    await run_doctor(load_settings({"RTXRELAY_DB": str(tmp_path / "r.db"), **env}, None), out)
    return out.getvalue()


async def test_https_in_rtx_url_for_an_http_server_says_use_http(
        rtx_426: Replica, tmp_path: Path) -> None:
    url = rtx_426.url.replace("http://", "https://")
    out = await doctor(tmp_path, RTX_URL=url, RTX_INSECURE_LOCALHOST="1")
    assert "plain http" in out and "http://" in out, out
    assert "RTX_INSECURE_LOCALHOST=1 when" not in out  # it is set already: not the fix


async def test_http_in_rtx_url_for_an_https_server_says_use_https(
        rtx_https: Replica, tmp_path: Path) -> None:
    url = rtx_https.url.replace("https://", "http://")
    out = await doctor(tmp_path, RTX_URL=url)
    assert "https://" in out and "crashed" not in out, out


async def test_a_missing_ca_file_is_named_as_such(rtx_https: Replica, tmp_path: Path) -> None:
    out = await doctor(tmp_path, RTX_URL=rtx_https.url, RTX_CA_FILE=str(tmp_path / "no.pem"))
    assert "FIX   RTX_CA_FILE:" in out and "FIX   RTX_URL" not in out, out


async def test_a_url_without_a_scheme_does_not_echo_its_cookie(tmp_path: Path) -> None:
    out = await doctor(tmp_path, RTX_URL="127.0.0.1:5000?cookie=5f1c6f0e-secret-cookie")
    assert "FIX   RTX_URL" in out and "secret-cookie" not in out, out


async def test_ask_reports_a_down_backend_once(tmp_path: Path) -> None:
    env = {"RTX_URL": f"http://127.0.0.1:{free_port()}?cookie=x",
           "RTXRELAY_DB": str(tmp_path / "r.db")}
    code, _, err = await run_cli("ask", "hello", env=env, cwd=tmp_path)
    assert code == 1 and err.count("Cannot connect to Chat with RTX") == 1, err
