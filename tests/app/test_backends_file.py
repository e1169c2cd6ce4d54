"""backends.toml: a pool's backends under .env's own setting names, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from rtxrelay.app.settings import BackendFamily, load_settings, secrets
from rtxrelay.core.errors import ConfigError

THREE = """
[[backend]]
name = "desk"
RTX_URL = "http://127.0.0.1:41231?cookie=desk-cookie"

[[backend]]
name = "office"                      # another PC's `rtxrelay serve`
OPENAI_BASE_URL = "https://office.lan:8443/v1"
OPENAI_API_KEY = "office-key"
MAX_CONCURRENT_JOBS = 2
OPENAI_IDLE_TIMEOUT = 30

[[backend]]
OPENAI_BASE_URL = "http://127.0.0.1:11434"
"""


def folder(tmp_path: Path, toml: str, env: str = "") -> Path:
    (tmp_path / "backends.toml").write_text(toml, encoding="utf-8")
    env_file = tmp_path / ".env"
    env_file.write_text(env, encoding="utf-8")
    return env_file


def test_each_entry_is_a_backend_with_its_own_address_and_the_shared_settings(
        tmp_path: Path) -> None:
    env_file = folder(tmp_path, THREE, "OPENAI_IDLE_TIMEOUT=90\nOPENAI_MODEL=from-env\n"
                      "SYSTEM_PROMPT=Be brief.\n")
    settings = load_settings({}, env_file)
    assert settings.pool and settings.backends_file == tmp_path / "backends.toml"
    desk, office, third = settings.backends
    assert (desk.name, desk.family, desk.jobs) == ("desk", BackendFamily.CHATRTX, None)
    assert desk.chatrtx.launch_url().port == 41231
    assert (office.family, office.jobs, office.openai.api_key) == (BackendFamily.OPENAI, 2,
                                                                   "office-key")
    assert office.openai.timeouts.idle == 30  # its own value wins
    assert third.name == "backend-3" and third.openai.endpoint().base == \
        "http://127.0.0.1:11434/v1"
    assert third.openai.timeouts.idle == 90  # inherited from .env
    assert third.openai.system_prompt == "Be brief."
    # What says which backend it is never comes from .env: the third has no model of its own.
    assert third.openai.model is None and third.openai.api_key is None
    for backend in settings.backends:
        backend.check()
    # Every entry's secrets are kept out of the logs.
    assert {"desk-cookie", "office-key"} <= set(secrets(settings))


def test_without_a_backends_file_env_names_the_one_backend(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("OPENAI_BASE_URL=http://127.0.0.1:8080/v1\nMAX_CONCURRENT_JOBS=3\n")
    settings = load_settings({}, env_file)
    assert not settings.pool
    (only,) = settings.backends
    assert (only.name, only.family, only.jobs) == ("openai", BackendFamily.OPENAI, 3)


def test_backends_file_may_live_elsewhere(tmp_path: Path) -> None:
    elsewhere = tmp_path / "conf" / "pool.toml"
    elsewhere.parent.mkdir()
    elsewhere.write_text(THREE, encoding="utf-8")
    settings = load_settings({"BACKENDS_FILE": str(elsewhere)}, None)
    assert [b.name for b in settings.backends] == ["desk", "office", "backend-3"]
    with pytest.raises(ConfigError, match=r"BACKENDS_FILE names .* which does not exist"):
        load_settings({"BACKENDS_FILE": str(tmp_path / "missing.toml")}, None)


@pytest.mark.parametrize(("toml", "expected"), [
    ('[[backend]]\nRTX_URL = "http://127.0.0.1:1?cookie=x"\nBOT = 1\n',
     "backend 1: BOT is not a backend setting"),
    ('[[backend]]\nRTX_LAUNCH = "app.bat"\n', "RTX_LAUNCH cannot start a backend of a pool"),
    ('[[backend]]\nname = "x"\n', "backend 1 has no address"),
    ('[[backend]]\nRTX_URL = "http://127.0.0.1:1"\nOPENAI_BASE_URL = "http://127.0.0.1:2"\n',
     "both RTX_URL and OPENAI_BASE_URL"),
    ('[[backend]]\nname = "a"\nRTX_URL = "http://127.0.0.1:1"\n'
     '[[backend]]\nname = "a"\nRTX_URL = "http://127.0.0.1:2"\n', "more than one backend 'a'"),
    ('[[backend]]\nname = "a b"\nRTX_URL = "http://127.0.0.1:1"\n', "is not a usable name"),
    ('[[backend]\n', "is not valid TOML"),
    ('title = "mine"\n', "lists no [[backend]] tables (found title)"),
    ('[[backend]]\nOPENAI_BASE_URL = "http://127.0.0.1:1"\nMAX_CONCURRENT_JOBS = 0\n',
     "backend 1 (backend-1): MAX_CONCURRENT_JOBS=0 is out of range"),
    ('[[backend]]\nOPENAI_BASE_URL = ["http://127.0.0.1:1"]\n', "must be text, a number"),
])
def test_a_malformed_file_says_which_entry_and_what_to_write(tmp_path: Path, toml: str,
                                                             expected: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings({}, folder(tmp_path, toml))
    assert expected in raised.value.message
    assert raised.value.hint


def test_a_bad_address_in_an_entry_is_located(tmp_path: Path) -> None:
    settings = load_settings({}, folder(
        tmp_path, '[[backend]]\nname = "far"\nOPENAI_BASE_URL = "ftp://x"\n'))
    with pytest.raises(ConfigError, match=r"^backends.toml, backend 1 \(far\): "):
        settings.backends[0].check()


def test_env_may_not_name_a_backend_beside_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings({}, folder(tmp_path, THREE, "RTX_URL=http://127.0.0.1:5/?cookie=c\n"))
    assert "backends.toml lists the backends, and RTX_URL is set as well" in raised.value.message
    assert raised.value.setting == "RTX_URL"
