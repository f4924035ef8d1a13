"""DbConfig: URL forms, the Node app's environment variables, errors, and password redaction."""

from __future__ import annotations

import pytest

import chatdb
from chatdb import DbConfig, create_repository, errors
from chatdb.config import redact_text, redact_url

SECRET = "s3cr3t-p@ss"


@pytest.mark.parametrize(
    ("url", "driver", "field", "value"),
    [
        ("sqlite:///./data/chat.db", "sqlite", "sqlite_path", "./data/chat.db"),
        ("sqlite:////var/lib/chat.db", "sqlite", "sqlite_path", "/var/lib/chat.db"),
        ("sqlite:///:memory:", "sqlite", "sqlite_path", ":memory:"),
        ("sqlite://", "sqlite", "sqlite_path", ":memory:"),
        ("postgresql://u:p@db:5432/chat", "postgres", "postgres_url", "postgresql://u:p@db:5432/chat"),
        ("postgres://u@db/chat", "postgres", "postgres_url", "postgres://u@db/chat"),
        ("postgresql+psycopg://u@db/chat", "postgres", "postgres_url", "postgresql+psycopg://u@db/chat"),
        ("mysql://root@db:3306/chat", "mysql", "mysql_url", "mysql://root@db:3306/chat"),
        ("mariadb://root@db/chat", "mysql", "mysql_url", "mariadb://root@db/chat"),
        ("mysql+pymysql://root@db/chat", "mysql", "mysql_url", "mysql+pymysql://root@db/chat"),
        ("mysql+mysqldb://root@db/chat", "mysql", "mysql_url", "mysql+mysqldb://root@db/chat"),
        ("mongodb://db:27017/chat", "mongodb", "mongodb_url", "mongodb://db:27017/chat"),
        (
            "mongodb+srv://u:p@cluster.example.net/chat",
            "mongodb",
            "mongodb_url",
            "mongodb+srv://u:p@cluster.example.net/chat",
        ),
    ],
)
def test_url_forms_select_the_backend(url: str, driver: str, field: str, value: str) -> None:
    config = DbConfig.from_url(url)
    assert config.driver == driver
    assert getattr(config, field) == value


def test_a_url_string_makes_a_repository_without_connecting() -> None:
    repo = create_repository("postgresql://user:pw@127.0.0.1:1/none")
    assert repo.backend == "postgres"
    repo.close()


def test_from_env_reads_the_node_variables() -> None:
    env = {"DB_DRIVER": "postgres", "POSTGRES_URL": "postgresql://u@h/db", "MONGODB_DB_NAME": "x"}
    config = DbConfig.from_env(env)
    assert (config.driver, config.postgres_url, config.mongodb_name) == (
        "postgres",
        "postgresql://u@h/db",
        "x",
    )
    mongo = DbConfig.from_env(
        {"DB_DRIVER": "mongodb", "MONGODB_URL": "mongodb://h/", "MONGODB_DB_NAME": "chats"}
    )
    assert (mongo.driver, mongo.mongodb_url, mongo.mongodb_name) == ("mongodb", "mongodb://h/", "chats")
    assert (
        DbConfig.from_env({"DB_DRIVER": "mysql", "MYSQL_URL": "mysql://r@h/d"}).mysql_url == "mysql://r@h/d"
    )


def test_from_env_defaults_to_embedded_sqlite() -> None:
    config = DbConfig.from_env({})
    assert (config.driver, config.sqlite_path) == ("sqlite", "./data/chat.db")
    assert DbConfig.from_env({"SQLITE_PATH": "/tmp/x.db"}).sqlite_path == "/tmp/x.db"


@pytest.mark.parametrize(
    ("make", "names"),
    [
        (lambda: DbConfig(driver="oracle"), "driver"),  # type: ignore[arg-type]
        (lambda: DbConfig(driver="postgres"), "postgres_url"),
        (lambda: DbConfig(driver="mysql"), "mysql_url"),
        (lambda: DbConfig(driver="mongodb"), "mongodb_url"),
        (lambda: DbConfig(driver="sqlite", sqlite_path=""), "sqlite_path"),
        (lambda: DbConfig(driver="postgres", postgres_url="mysql://h/d"), "postgres_url"),
        (lambda: DbConfig(driver="postgres", postgres_url="postgresql://u@h:notaport/d"), "postgres_url"),
        (lambda: DbConfig(driver="postgres", postgres_url="postgresql:///nohost"), "postgres_url"),
        (lambda: DbConfig.from_url("oracle://h/d"), "oracle"),
        (lambda: DbConfig.from_url("not a url"), "url"),
        (lambda: DbConfig.from_url("sqlite:relative.db"), "sqlite"),
        (lambda: DbConfig.from_env({"DB_DRIVER": "postgres"}), "POSTGRES_URL"),
        (lambda: DbConfig.from_env({"DB_DRIVER": "cassandra"}), "DB_DRIVER"),
        (lambda: DbConfig(connect_timeout=0), "connect_timeout"),
        (lambda: DbConfig(driver="mongodb", mongodb_url="mongodb://h/", mongodb_name=""), "mongodb_name"),
        (lambda: create_repository(42), "DbConfig"),  # type: ignore[arg-type]
    ],
)
def test_bad_configuration_is_a_config_error_naming_the_field(make: object, names: str) -> None:
    with pytest.raises(errors.ConfigError) as caught:
        make()  # type: ignore[operator]
    assert names in str(caught.value)


def test_passwords_never_show_in_repr_or_errors() -> None:
    url = f"postgresql://admin:{SECRET}@db.internal:5432/chat"
    config = DbConfig.from_url(url)
    assert SECRET not in repr(config)
    assert SECRET not in config.redacted_url and "***" in config.redacted_url
    repo = create_repository(config)
    assert SECRET not in repr(repo)
    with pytest.raises(errors.ConfigError) as caught:
        DbConfig(driver="postgres", postgres_url=f"mysql://admin:{SECRET}@db/chat")
    assert SECRET not in str(caught.value)
    with pytest.raises(errors.ConfigError) as caught:
        DbConfig(driver="postgres", postgres_url=f"postgresql://admin:{SECRET}@db:bad/chat")
    assert SECRET not in str(caught.value)


def test_redact_url_keeps_everything_but_the_password() -> None:
    assert redact_url(f"mysql://root:{SECRET}@h:3306/d?x=1") == "mysql://root:***@h:3306/d?x=1"
    assert redact_url("mysql://root@h/d") == "mysql://root@h/d"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u@h:5544/x?password=qpass", "postgresql://u@h:5544/x?password=***"),
        (
            "postgresql://u@h/x?sslmode=require&sslpassword=qpass&connect_timeout=3",
            "postgresql://u@h/x?sslmode=require&sslpassword=***&connect_timeout=3",
        ),
        (
            "mysql://root@h/d?pass=qpass&pwd=qpass&passwd=qpass",
            "mysql://root@h/d?pass=***&pwd=***&passwd=***",
        ),
        ("mysql://root@h/d?PASSWORD=qpass", "mysql://root@h/d?PASSWORD=***"),
        ("mysql://root@h/d?pass%77ord=qpass", "mysql://root@h/d?pass%77ord=***"),
        ("mongodb://h/?secret=qpass&token=qpass&x=1", "mongodb://h/?secret=***&token=***&x=1"),
        ("mongodb://h/?access_token=qpass;api_key=qpass", "mongodb://h/?access_token=***&api_key=***"),
        (
            "mongodb://h/?tlsCertificateKeyFilePassword=qpass",
            "mongodb://h/?tlsCertificateKeyFilePassword=***",
        ),
        (
            "mongodb://u:qpass@h1,h2/db?authMechanism=MONGODB-AWS"
            "&authMechanismProperties=AWS_SESSION_TOKEN:qpass,SERVICE_NAME:svc&authSource=admin",
            "mongodb://u:***@h1,h2/db?authMechanism=MONGODB-AWS"
            "&authMechanismProperties=AWS_SESSION_TOKEN:***,SERVICE_NAME:svc&authSource=admin",
        ),
        (
            "mongodb://h/?authMechanismProperties=AWS_SESSION_TOKEN%3Aqpass%2CSERVICE_NAME%3Asvc",
            "mongodb://h/?authMechanismProperties=AWS_SESSION_TOKEN:***,SERVICE_NAME:svc",
        ),
        ("sqlite:///chat.db?mode=ro", "sqlite:///chat.db?mode=ro"),
    ],
)
def test_secret_query_parameters_are_redacted(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert "qpass" not in redact_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u@h:5544/x?password=qpass",
        "postgresql://u@h:5544/x?sslpassword=qpass",
        "mysql://root@h/d?pass=qpass",
        "mongodb://h/db?authMechanismProperties=AWS_SESSION_TOKEN:qpass",
    ],
)
def test_query_secrets_never_show_in_repr_or_config_errors(url: str) -> None:
    config = DbConfig.from_url(url)
    assert "qpass" not in repr(config) and "qpass" not in config.redacted_url
    assert "qpass" not in repr(create_repository(config))
    with pytest.raises(errors.ConfigError) as caught:
        DbConfig(driver="postgres", postgres_url="mysql" + url[url.index(":") :])
    assert "qpass" not in str(caught.value)
    with pytest.raises(errors.ConfigError) as caught:
        DbConfig(driver="postgres", postgres_url="postgresql://u@h:bad/x" + url[url.index("?") :])
    assert "qpass" not in str(caught.value)


def test_redact_text_hides_every_form_of_a_secret() -> None:
    url = "postgresql://u:p%40ss@h/x?password=q%2Bpass"
    text = "failed for p@ss, p%40ss, q+pass and q%2Bpass at postgresql://u:p%40ss@h/x?password=q%2Bpass"
    cleaned = redact_text(text, url)
    assert "p@ss" not in cleaned and "40ss" not in cleaned and "pass" not in cleaned.replace("password", "")
    assert "h/x?password=***" in cleaned


def test_unreachable_server_is_backend_unavailable_fast_without_password() -> None:
    import time

    url = f"postgresql://admin:{SECRET}@127.0.0.1:1/chat"
    repo = create_repository(DbConfig(driver="postgres", postgres_url=url, connect_timeout=2))
    started = time.monotonic()
    with pytest.raises(errors.BackendUnavailableError) as caught:
        repo.get_chat("c", "u")
    assert time.monotonic() - started < 5
    message = str(caught.value)
    assert SECRET not in message and "127.0.0.1:1" in message and "postgres" in message
    repo.close()


def test_unreachable_mysql_is_backend_unavailable_without_password() -> None:
    repo = create_repository(
        DbConfig(driver="mysql", mysql_url=f"mysql://root:{SECRET}@127.0.0.1:1/chat", connect_timeout=2)
    )
    with pytest.raises(errors.BackendUnavailableError) as caught:
        repo.create_chat("u")
    assert SECRET not in str(caught.value) and "127.0.0.1:1" in str(caught.value)
    repo.close()


def test_public_api_is_small_sorted_and_complete() -> None:
    assert chatdb.__all__ == sorted(chatdb.__all__)
    for name in chatdb.__all__:
        assert hasattr(chatdb, name)
    assert issubclass(errors.ValidationError, ValueError)
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), (errors.ChatDbError, errors.SchemaWarning))


def test_importing_chatdb_does_not_import_optional_drivers() -> None:
    import subprocess
    import sys

    code = (
        "import sys, chatdb; chatdb.create_repository('sqlite:///:memory:');"
        "print(sorted(m for m in ('psycopg','pymysql','pymongo','polars','duckdb','pyarrow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
