from pathlib import Path

import pytest

from streams.config import SETTINGS, ConfigError, Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_readme_documents_every_setting_with_its_default():
    for name, (default, _) in SETTINGS.items():
        row = next((ln for ln in README.splitlines() if ln.startswith(f"| `{name}` |")), None)
        assert row is not None, f"README lacks {name}"
        assert (f"`{default}`" if default else "*(empty)*") in row, (
            f"README default of {name} differs"
        )


def test_defaults_are_the_embedded_setup():
    s = Settings.from_env({})
    assert s.embedded_broker and s.embedded_clickhouse
    assert s.kafka_producer_max_batch_size is None  # the Tansu workaround is a local setting only


def test_env_round_trip():
    s = Settings.from_env(
        {
            "KAFKA_BOOTSTRAP_SERVERS": "k:9092",
            "KAFKA_PARTITIONS": "12",
            "CLICKHOUSE_URL": "http://u@h:8123/db",
        }
    )
    assert Settings.from_env(s.to_env()) == s


@pytest.mark.parametrize(
    "env,fragment",
    [
        ({"KAFKA_PARTITIONS": "many"}, "KAFKA_PARTITIONS='many' is not an integer"),
        ({"KAFKA_PARTITIONS": "0"}, "must be at least 1"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
        (
            {"WORKER_STALL_TIMEOUT_S": "-1"},
            "WORKER_STALL_TIMEOUT_S='-1' must be at least 0 (0 = never)",
        ),
    ],
)
def test_bad_settings_name_the_variable(env, fragment):
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert fragment in str(info.value)


def test_only_the_projects_own_variables_are_read():
    # a Kafka install's KAFKA_HOME, a ClickHouse client's CLICKHOUSE_USER: other programs' settings
    s = Settings.from_env(
        {
            "KAFKA_HOME": "/opt/kafka",
            "CLICKHOUSE_USER": "default",
            "WORKER_SOMETHING": "x",
            "KAFKA_PARTITIONS": "6",
        }
    )
    assert s.kafka_partitions == 6 and s == Settings.from_env({"KAFKA_PARTITIONS": "6"})


def test_a_stall_timeout_of_zero_means_never():
    assert Settings.from_env({"WORKER_STALL_TIMEOUT_S": "0"}).worker_stall_timeout_s == 0
    assert Settings.from_env({}).worker_stall_timeout_s == 120


def test_secrets_do_not_appear_in_repr_or_display():
    s = Settings.from_env(
        {
            "CLICKHOUSE_URL": "http://u:pw-in-url@h:8123/db",
            "CLICKHOUSE_PASSWORD": "s3cret",
            "KAFKA_SASL_PASSWORD": "k-s3cret",
        }
    )
    text = repr(s) + s.clickhouse_dsn_for_display()
    assert "s3cret" not in text and "pw-in-url" not in text


def test_each_setting_is_declared_once_with_type_default_and_doc():
    import typing
    from dataclasses import fields

    from streams.config import SETTINGS, Settings

    hints = typing.get_type_hints(Settings)
    names = {f.name.upper() for f in fields(Settings)}
    files = {f"{f.name.upper()}_FILE" for f in fields(Settings) if f.metadata["file_doc"]}
    assert set(SETTINGS) == names | files  # the table is derived, not a second list
    for f in fields(Settings):
        assert f.metadata["doc"] and hints[f.name] is not None, f.name
    source = (Path(__file__).resolve().parents[2] / "streams" / "config.py").read_text()
    for name in names:  # no variable name is spelled out a second time in the module
        assert f'"{name}"' not in source, name
