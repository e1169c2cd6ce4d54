"""Settings: the .env file and the environment, clear errors, TLS policy, secrets kept out
of logs."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from rtxrelay.app.log_redaction import MASK, RedactingFormatter
from rtxrelay.app.settings import load_settings, secrets
from rtxrelay.core.errors import ConfigError
from rtxrelay.core.i18n import Language
from rtxrelay.storage.dsn import PostgresDsn

# -- settings -------------------------------------------------------------------------------------


def test_settings_from_env_file_and_environment(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text('RTX_URL="http://127.0.0.1:5000?cookie=abc"\nHISTORY_TURNS=3\n')
    settings = load_settings({"HISTORY_TURNS": "5"}, env_file)
    assert settings.chatrtx.launch_url().port == 5000
    assert settings.limits.history_turns == 5  # the real environment wins over .env
    assert settings.env_file == env_file


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("HISTORY_TURNS", "lots", "HISTORY_TURNS='lots' is not a whole number"),
        ("MAX_CONCURRENT_JOBS", "0", "MAX_CONCURRENT_JOBS=0 is out of range"),
        ("RTX_IDLE_TIMEOUT", "-1", "RTX_IDLE_TIMEOUT=-1 is out of range"),
        ("RTX_INSECURE_LOCALHOST", "maybe", "is not a yes/no value"),
        ("LOG_LEVEL", "LOUD", "is not a log level"),
    ],
)
def test_malformed_settings_name_the_variable(name: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_settings({name: value}, None)
    assert expected in excinfo.value.message


def test_the_database_is_a_file_beside_the_settings_or_a_postgresql_url(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("RTXRELAY_DB=data/relay.db\n")
    assert load_settings({}, env_file).database == tmp_path / "data" / "relay.db"
    assert load_settings({}, None).database == Path.cwd() / "rtxrelay.db"
    assert load_settings({"RTXRELAY_DB": ":memory:"}, None).database == Path(":memory:")
    url = "postgresql://relay:pg-password-1234@db.lan:5433/rtxrelay"
    settings = load_settings({"RTXRELAY_DB": url}, env_file)  # the environment wins
    assert isinstance(settings.database, PostgresDsn) and settings.database.url == url
    assert str(settings.database) == "postgresql://relay:***@db.lan:5433/rtxrelay"
    assert "pg-password-1234" in secrets(settings)  # masked in every log line


def test_a_malformed_database_url_names_the_setting_not_the_password() -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_settings({"RTXRELAY_DB": "postgresql://relay:pg-password-1234@db.lan:x/rtx"}, None)
    assert excinfo.value.setting == "RTXRELAY_DB" and "no valid port" in excinfo.value.message
    assert "pg-password-1234" not in str(excinfo.value)


@pytest.mark.parametrize(("value", "language"), [
    (None, Language.EN), ("en", Language.EN), ("zh-CN", Language.ZH_CN),
    ("zh_CN", Language.ZH_CN), ("zh-Hans", Language.ZH_CN), ("zh-TW", Language.ZH_TW),
    ("zh_tw", Language.ZH_TW), ("zh-Hant", Language.ZH_TW), ("en-GB", Language.EN),
])
def test_default_language_takes_the_tags_users_write(value: str | None,
                                                      language: Language) -> None:
    environ = {} if value is None else {"DEFAULT_LANGUAGE": value}
    assert load_settings(environ, None).default_language is language


def test_a_default_language_rtxrelay_does_not_speak_lists_the_ones_it_does() -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_settings({"DEFAULT_LANGUAGE": "fr"}, None)
    assert excinfo.value.setting == "DEFAULT_LANGUAGE"
    assert "DEFAULT_LANGUAGE='fr'" in excinfo.value.message
    for tag in ("en", "zh-CN", "zh-TW"):
        assert tag in excinfo.value.hint


def test_tls_settings(tmp_path: Path) -> None:
    https = "https://127.0.0.1:5000?cookie=a"
    remote = load_settings({"RTX_URL": "https://192.168.1.5:5000?cookie=a",
                            "RTX_INSECURE_LOCALHOST": "1"}, None)
    with pytest.raises(ConfigError) as excinfo:
        remote.chatrtx.ssl_context(remote.chatrtx.launch_url())
    assert "RTX_CA_FILE" in excinfo.value.hint
    local = load_settings({"RTX_URL": https, "RTX_INSECURE_LOCALHOST": "yes"}, None)
    assert local.chatrtx.ssl_context(local.chatrtx.launch_url()) is False
    missing = load_settings({"RTX_URL": https, "RTX_CA_FILE": str(tmp_path / "nope.pem")}, None)
    with pytest.raises(ConfigError):
        missing.chatrtx.ssl_context(missing.chatrtx.launch_url())
    with pytest.raises(ConfigError) as unset:
        load_settings({}, None).chatrtx.launch_url()
    assert "discover" in unset.value.hint


def test_log_redaction_masks_tokens_cookie_and_tracebacks() -> None:
    token = "7000001234:AAsecretsecretsecret"
    settings = load_settings({"TELEGRAM_TOKEN": token, "DISCORD_TOKEN": "x",
                              "RTX_URL": "http://127.0.0.1:5000?cookie=cookie-uuid-1234"}, None)
    formatter = RedactingFormatter(logging.Formatter("%(message)s"), secrets(settings))
    try:
        raise ValueError(f"The token `{token}` was rejected")
    except ValueError:
        record = logging.LogRecord("t", logging.ERROR, __file__, 1,
                                   "POST /bot%s/getMe cookie=%s", (token, "cookie-uuid-1234"),
                                   sys.exc_info())
    text = formatter.format(record)
    assert token not in text and "AAsecretsecretsecret" not in text
    assert "cookie-uuid-1234" not in text and MASK in text
    assert "rejected" in text  # the rest of the line and the traceback stay readable
    assert "x" in formatter.format(logging.LogRecord("t", 20, __file__, 1, "x", (), None))


@pytest.mark.fault('12', 'plain http to another machine refused, doctor says why')
async def test_plain_http_to_another_machine_needs_an_explicit_opt_in(
        fault, tmp_path: Path) -> None:
    import io

    from rtxrelay.app.doctor import run_doctor

    remote = {"RTX_URL": "http://192.168.1.5:5000?cookie=a", "RTXRELAY_DB": str(tmp_path / "d")}
    settings = load_settings(remote, None)
    with pytest.raises(ConfigError) as refused:
        settings.chatrtx.ssl_context(settings.chatrtx.launch_url())
    assert "unencrypted" in refused.value.message and "RTX_ALLOW_REMOTE_HTTP" in refused.value.hint
    out = io.StringIO()
    assert await run_doctor(settings, out) == 1
    assert "FIX   RTX_URL: RTX_URL is plain http to another machine" in out.getvalue()
    allowed = load_settings({**remote, "RTX_ALLOW_REMOTE_HTTP": "1"}, None)
    assert allowed.chatrtx.ssl_context(allowed.chatrtx.launch_url()) is True
    local = load_settings({"RTX_URL": "http://127.0.0.1:5000?cookie=a"}, None)
    assert local.chatrtx.ssl_context(local.chatrtx.launch_url()) is True
    fault()


def test_log_wire_lets_the_libraries_debug_lines_through_and_only_then() -> None:
    from rtxrelay.app.log_redaction import LIBRARY_LOGGERS, quiet_libraries

    try:
        quiet_libraries(logging.DEBUG)
        assert all(logging.getLogger(n).level == logging.INFO for n in LIBRARY_LOGGERS
                   if n != "httpx")
        assert logging.getLogger("httpx").level == logging.WARNING  # a line per long poll
        assert not load_settings({}, None).wire_logs
        assert load_settings({"LOG_WIRE": "1"}, None).wire_logs
        quiet_libraries(logging.DEBUG, wire=True)
        assert all(logging.getLogger(n).level == logging.DEBUG for n in LIBRARY_LOGGERS)
    finally:
        for name in LIBRARY_LOGGERS:
            logging.getLogger(name).setLevel(logging.NOTSET)
