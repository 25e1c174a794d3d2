"""Schema evolution: a consumer with the current schemas reads what producers wrote with any older
version (fastavro schema resolution through the registry ids in the wire format), and every
version obeys README's compatibility rule: add fields with defaults; never retype one; remove one
only by naming it, with the reason, in the new version's ``x-removed``."""

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastavro.utils import generate_many

from streams.ingest.codec import SCHEMAS_DIR, registry
from streams.sink.clickhouse import deduction_row

INDEX = json.loads((SCHEMAS_DIR / "registry.json").read_text())["schemas"]


def versions() -> dict[str, list[tuple[int, int, dict]]]:
    """short name -> [(version, schema id, raw schema)], oldest first."""
    out: dict[str, list] = {}
    for schema_id, filename in INDEX.items():
        short, version = filename.rsplit(".v", 1)
        out.setdefault(short, []).append(
            (
                int(version.split(".")[0]),
                int(schema_id),
                json.loads((SCHEMAS_DIR / filename).read_text()),
            )
        )
    return {k: sorted(v) for k, v in out.items()}


def plain(value):
    """Logical timestamp-millis back to the long that was written."""
    if isinstance(value, datetime):
        return (value - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
    return value


EVOLVED = {name: vs for name, vs in versions().items() if len(vs) > 1}


def test_at_least_one_schema_has_evolved():
    # deduction v2 added kind / adjusts_deduction_id / rerate_id; the tests below read v1 with it
    assert "deduction" in EVOLVED


def test_ids_are_never_reused_and_files_exist():
    assert len(set(INDEX.values())) == len(INDEX)
    for filename in INDEX.values():
        assert (SCHEMAS_DIR / filename).is_file(), filename
    assert sorted(p.name for p in SCHEMAS_DIR.glob("*.avsc")) == sorted(INDEX.values())


@pytest.mark.parametrize("name", sorted(versions()))
def test_every_version_follows_the_compatibility_rule(name):
    vs = versions()[name]
    for (_, _, older), (version, _, newer) in zip(vs, vs[1:], strict=False):
        old_fields = {f["name"]: f for f in older["fields"]}
        new_fields = {f["name"]: f for f in newer["fields"]}
        removed = set(old_fields) - set(new_fields)
        assert removed <= set(newer.get("x-removed", {})), (
            f"{name} v{version} removes {removed} without saying why"
        )
        for field in set(newer.get("x-removed", {})):
            assert field not in new_fields, (
                f"{name} v{version} lists {field} as removed but keeps it"
            )
        for field, spec in old_fields.items():
            if field in removed:
                continue
            assert new_fields[field]["type"] == spec["type"], f"{name} v{version} retypes {field}"
        for field in set(new_fields) - set(old_fields):
            assert "default" in new_fields[field], (
                f"{name} v{version} adds {field} without a default"
            )
        assert (newer["namespace"], newer["name"]) == (older["namespace"], older["name"])


@pytest.mark.parametrize("name", sorted(EVOLVED))
def test_records_written_with_an_older_version_read_with_the_current_one(name):
    reg = registry()
    current = versions()[name][-1]
    for _version, schema_id, raw in versions()[name][:-1]:
        parsed = reg.by_id[schema_id].parsed
        for record in generate_many(parsed, 50):
            framed = reg.encode(name, record, schema_id=schema_id)
            # the wire names the writer's version
            assert framed[1:5] == schema_id.to_bytes(4, "big")
            decoded_name, decoded = reg.decode(framed)
            assert decoded_name == name
            added = {
                f["name"]: f["default"]
                for f in current[2]["fields"]
                if f["name"] not in {g["name"] for g in raw["fields"]}
            }
            for field, default in added.items():
                assert decoded[field] == default, field
            removed = {f["name"] for f in raw["fields"]} - {f["name"] for f in current[2]["fields"]}
            for field in record:
                if field in removed:  # the current reader drops what a newer version removed
                    assert field not in decoded, field
                    continue
                if name == "event_batch" and field == "events":
                    # nested records: each event comes back as (record name, event) with the
                    # fields the newer usage_event adds at their defaults
                    for (_, got), sent in zip(decoded[field], record[field], strict=True):
                        sent = sent[1] if isinstance(sent, tuple) else sent
                        assert {k: plain(got[k]) for k in sent} == sent
                        assert all(got[k] in (None, False) for k in set(got) - set(sent))
                    continue
                assert plain(decoded[field]) == record[field], field


def test_an_old_deduction_lands_in_clickhouse_as_usage():
    reg = registry()
    v1_id = next(sid for v, sid, _ in versions()["deduction"] if v == 1)
    record = next(iter(generate_many(reg.by_id[v1_id].parsed, 1)))
    record.update(
        rated_amount="1.5",
        unbilled_amount="0",
        balance_after="3",
        splits=[],
        lines=[],
        quantities={},
        item="tokens",
    )
    _, decoded = reg.decode(reg.encode("deduction", record, schema_id=v1_id))
    row = deduction_row(decoded)
    # kind, adjusts_deduction_id, rerate_id, settlement_id, sequence
    assert row[-5:] == ("usage", "", "", "", 0)


def test_readme_states_the_rule():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "Compatibility rule for `schemas/`" in readme and "new fields have defaults" in readme
