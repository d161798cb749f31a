"""Settings: arguments, then APP_* environment variables, then defaults; bad values refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from app import Database, Settings
from app.errors import ConfigurationError


def test_defaults_come_from_the_documented_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("APP_DATABASE_URL", raising=False)
    settings = Settings.resolve()
    assert settings.url == "sqlite:///data/memory.db"
    assert (settings.journal_mode, settings.synchronous) == ("wal", "normal")
    assert settings.should_auto_upgrade is True
    assert settings.sqlite_path == "data/memory.db"


def test_arguments_win_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_DATABASE_URL", "sqlite:///from-env.db")
    monkeypatch.setenv("APP_POOL_SIZE", "7")
    monkeypatch.setenv("APP_BUSY_TIMEOUT", "2.5")
    monkeypatch.setenv("APP_AUTO_UPGRADE", "false")
    monkeypatch.setenv("APP_CACHE_SIZE", "-4000")
    from_env = Settings.resolve()
    assert from_env.url == "sqlite:///from-env.db"
    assert from_env.pool_size == 7
    assert from_env.busy_timeout == 2.5
    assert from_env.auto_upgrade is False
    assert from_env.cache_size == -4000
    explicit = Settings.resolve("sqlite:///arg.db", pool_size=3)
    assert explicit.url == "sqlite:///arg.db"
    assert explicit.pool_size == 3


def test_postgres_urls_use_psycopg3_and_hide_passwords() -> None:
    settings = Settings.resolve("postgresql://user:secret@db.example/app")
    assert settings.parsed_url.drivername == "postgresql+psycopg"
    assert "secret" not in settings.safe_url()
    assert settings.should_auto_upgrade is False
    assert settings.is_sqlite is False


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        ({"pool_size": 0}, "pool_size must be a number >= 1"),
        ({"busy_timeout": -1}, "busy_timeout must be a number >= 0"),
        ({"journal_mode": "wall"}, "journal_mode must be one of"),
        ({"synchronous": "sometimes"}, "synchronous must be one of"),
        ({"file_mode": 0o1777}, "file_mode must be permission bits"),
        ({"pool_sise": 3}, "unknown setting(s) pool_sise"),
        ({"url": "mysql://localhost/db"}, "unsupported database URL scheme 'mysql'"),
        ({"url": "::not a url::"}, "cannot parse database URL"),
    ],
)
def test_bad_settings_name_what_is_wrong(
    arguments: dict[str, object], fragment: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigurationError) as raised:
        Database(**arguments)  # type: ignore[arg-type]
    assert fragment in str(raised.value)
    assert list(tmp_path.iterdir()) == []  # nothing created on the way


def test_bad_environment_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_POOL_SIZE", "many")
    with pytest.raises(ConfigurationError, match="APP_POOL_SIZE='many'"):
        Settings.resolve("sqlite://")
