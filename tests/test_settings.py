"""Settings: arguments, then APP_* environment variables, then defaults; bad values refused."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from app import Database, Settings
from app.errors import ConfigurationError, DatabaseUnavailableError


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
        ({"pool_size": 0}, "pool_size must be a whole number >= 1"),
        ({"pool_size": 2.5}, "pool_size must be a whole number >= 1"),
        ({"busy_timeout": float("nan")}, "busy_timeout must be a number >= 0"),
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


# -- URLs are checked before anything touches the disk ------------------------------------

MISTAKEN_URLS = [
    (
        "sqlite://data/memory.db",
        "did you mean sqlite:///data/memory.db (relative to the working directory) or "
        "sqlite:////data/memory.db (an absolute path)?",
    ),
    (
        "sqlite:/data/memory.db",
        "did you mean sqlite:///data/memory.db (relative to the working directory) or "
        "sqlite:////data/memory.db (an absolute path)?",
    ),
    (
        "data/memory.db",
        "is a file path, not a database URL; did you mean sqlite:///data/memory.db?",
    ),
    ("/srv/memory.db", "did you mean sqlite:////srv/memory.db?"),
    (":memory:", "did you mean sqlite:// (in memory)?"),
    (
        "postgresql+psycopg2://user:secret@db.example/app",
        "the PostgreSQL driver 'psycopg2' in 'postgresql+psycopg2://user:***@db.example/app' is "
        "not supported (this layer uses psycopg 3): did you mean "
        "postgresql+psycopg://user:***@db.example/app?",
    ),
    ("postgresql+asyncpg://db.example/app", "did you mean postgresql+psycopg://db.example/app?"),
    ("sqlite3:///data/memory.db", "did you mean sqlite:///data/memory.db?"),
    ("postgress://db.example/app", "did you mean postgresql+psycopg://db.example/app?"),
]


@pytest.mark.parametrize(("url", "suggestion"), MISTAKEN_URLS, ids=[u for u, _ in MISTAKEN_URLS])
def test_mistaken_urls_suggest_the_right_one_and_create_nothing(
    url: str, suggestion: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigurationError) as raised:
        Database(url)
    assert type(raised.value) is ConfigurationError
    assert suggestion in str(raised.value)
    assert "secret" not in str(raised.value)
    assert list(tmp_path.iterdir()) == []


def test_tilde_is_not_a_directory_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(ConfigurationError) as raised:
        Database("sqlite:///~/memory.db")
    assert f"did you mean sqlite:///{tmp_path}/home/memory.db?" in str(raised.value)
    assert list(tmp_path.iterdir()) == []


def test_unknown_scheme_without_a_close_one_has_no_suggestion() -> None:
    with pytest.raises(ConfigurationError) as raised:
        Settings.resolve("mysql://localhost/db")
    assert "did you mean" not in str(raised.value)
    assert "sqlite:///relative/path.db" in str(raised.value)


def test_postgres_without_psycopg_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "psycopg" else real(name, *a)
    )
    with pytest.raises(ConfigurationError) as raised:
        Settings.resolve("postgresql+psycopg://db.example/app")
    assert "pip install 'hashchain-memory-db[postgres]'" in str(raised.value)


# -- creating a database file is visible and can be refused --------------------------------


def test_a_new_file_is_logged_with_its_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO, logger="app.engine._sqlite_file"):
        Database("sqlite:///new/memory.db").dispose()
    created = [r.getMessage() for r in caplog.records if r.name == "app.engine._sqlite_file"]
    assert created == [
        f"created directory {tmp_path / 'new'} for the database",
        f"created a new database file {tmp_path / 'new' / 'memory.db'}",
    ]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="app.engine._sqlite_file"):
        Database("sqlite:///new/memory.db").dispose()  # exists now: nothing to say
    assert [r for r in caplog.records if r.name == "app.engine._sqlite_file"] == []


def test_create_false_demands_an_existing_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatabaseUnavailableError) as raised:
        Database("sqlite:///dta/memory.db", create=False)
    message = str(raised.value)
    assert f"{tmp_path / 'dta' / 'memory.db'} does not exist" in message
    assert "`python -m app --url sqlite:///dta/memory.db db upgrade`" in message
    assert list(tmp_path.iterdir()) == []  # neither the file nor its directory
    Database("sqlite:///memory.db").dispose()
    with Database("sqlite:///memory.db", create=False) as db:
        assert db.settings.create is False


def test_create_comes_from_the_environment_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_CREATE", "false")
    assert Settings.resolve("sqlite:///x.db").create is False
    with pytest.raises(ConfigurationError, match="create must be True or False"):
        Settings.resolve("sqlite:///x.db", create="no")


def test_an_unknown_server_host_is_named_unavailable() -> None:
    with pytest.raises(DatabaseUnavailableError, match=r"cannot reach .*nohost\.invalid"):
        Database("postgresql+psycopg://user@nohost.invalid/app?connect_timeout=2")
