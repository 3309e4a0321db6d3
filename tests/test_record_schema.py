"""The record's models: schema_version 2, version-1 files still read (upgraded in memory), the JSON
Schema the models give, and the probes' own entry models."""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from hjepa_bench.measure.results import check_result, entry_models, read_results
from hjepa_bench.plugin.api import Probe
from hjepa_bench.plugin.manager import build_plugins
from hjepa_bench.record import (
    SCHEMA_VERSION,
    RecordError,
    check_probe_entry,
    check_record,
    loads,
    new_record,
    read_json,
    record_json_schema,
    upgrade_record,
)
from hjepa_bench.record_model import MISSING, ProbeEntry

REPO = Path(__file__).resolve().parents[1]
V1_FILES = (REPO / "tests" / "data" / "example_cpu_results.jsonl", REPO / "reports" / "example-cpu" / "results.jsonl")
V1_KEYS = {"stability": ("criterion_cv_lt_20pct", "criterion_cv_below_limit"),
           "loss": ("criterion_loss_down_20pct", "criterion_loss_decrease_met")}


def _v1_lines(path: Path) -> list[str]:
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    assert lines and all(json.loads(ln)["schema_version"] == 1 for ln in lines), f"{path} is no longer version 1"
    return lines


# --------------------------------------------------------------------------- versions
def test_new_records_are_version_2():
    assert SCHEMA_VERSION == 2
    assert new_record({}, {"backend": "cpu"})["schema_version"] == 2


@pytest.mark.parametrize("path", V1_FILES, ids=lambda p: p.parent.name)
def test_a_version_1_results_file_reads_as_version_2(path):
    """A version-1 record said ``criterion_cv_lt_20pct`` whatever limit judged it; read today it has
    the version-2 keys, with the same values, and its definitions say the same."""
    raw = [json.loads(ln) for ln in _v1_lines(path)]
    records = read_results(path).records
    assert len(records) == len(raw)
    renamed = 0
    for old, new in zip(raw, records):
        assert new["schema_version"] == 2
        for name, (v1_key, v2_key) in V1_KEYS.items():
            entry = new["probes"].get(name)
            if not entry or v1_key not in old["probes"][name]:
                continue
            # the value too reads in the one spelling of the statuses ("not-measured" -> "not measured")
            old_value = old["probes"][name][v1_key]
            assert v1_key not in entry and entry[v2_key] == old_value.replace("not-measured", "not measured")
            assert v1_key not in json.dumps(entry)
            renamed += 1
        assert {k: v for k, v in new.items() if k not in ("schema_version", "probes")} == \
            {k: v for k, v in old.items() if k not in ("schema_version", "probes")}
    assert renamed >= 2
    text = path.read_text()
    assert read_results(path).records and path.read_text() == text  # the file is never rewritten


def test_loads_and_read_json_upgrade_a_version_1_record(tmp_path):
    line = _v1_lines(V1_FILES[0])[0]
    record = loads(line)
    assert record["schema_version"] == 2 and "criterion_cv_below_limit" in record["probes"]["stability"]
    (tmp_path / "r.json").write_text(line)
    assert read_json(tmp_path / "r.json") == record
    check_record(json.loads(line))  # a version-1 record is valid as it reads
    assert upgrade_record(record) is record  # a current record is itself


@pytest.mark.parametrize("version, message", [
    (3, "schema_version 3 is newer than this hjepa-bench reads (1 to 2); read it with a newer hjepa-bench"),
    (0, "schema_version must be an integer from 1 to 2, not 0"),
    ("2", 'schema_version must be an integer from 1 to 2, not "2"'),
])
def test_an_unknown_schema_version_is_one_sentence(tmp_path, capsys, version, message):
    from hjepa_bench.cli import main

    record = loads(_v1_lines(V1_FILES[0])[0])
    record["schema_version"] = version
    with pytest.raises(RecordError, match=re.escape(message)):
        loads(json.dumps(record))
    folder = tmp_path / "res"
    folder.mkdir()
    (folder / "results.jsonl").write_text(json.dumps(record) + "\n")
    assert main(["report", str(folder), "--no-charts", "--out", str(tmp_path / "rep" / "report.md")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == f"warning: {folder / 'results.jsonl'} line 1: not a valid record ({message}); skipped"
    assert len(err) == 2 and err[1].startswith("hjepa-bench: error: no valid result records")


# --------------------------------------------------------------------------- the JSON Schema
def test_the_json_schema_has_the_top_level_fields_and_docs_list_each():
    schema = record_json_schema()
    fields = set(schema["properties"])
    assert {"schema_version", "status", "config", "env", "params", "metrics", "series", "probes", "distributed",
            "sweep", "node", "error", "started_at", "duration_s", "config_warnings"} <= fields
    assert set(schema["required"]) == {"schema_version", "status", "config", "env", "params", "metrics", "probes"}
    assert schema["properties"]["schema_version"]["const"] == SCHEMA_VERSION
    docs = (REPO / "docs" / "schema.md").read_text()
    table = re.findall(r"^\| (`[^|]+`) \|", docs, re.M)
    documented = {name for cell in table for name in re.findall(r"`([a-z_]+)", cell)}
    assert fields <= documented, f"docs/schema.md lacks {sorted(fields - documented)}"
    assert f"# Result schema (`schema_version` {SCHEMA_VERSION})" in docs and "record_json_schema" in docs


def test_real_records_fit_the_json_schema():
    """The JSON Schema says what the models check: every record of the examples fits it, and an ok
    record without a speed does not."""
    jsonschema = pytest.importorskip("jsonschema")
    schema = record_json_schema()
    validator = jsonschema.Draft202012Validator(schema)
    for path in V1_FILES:
        for line in _v1_lines(path):
            validator.validate(loads(line))
    bad = loads(_v1_lines(V1_FILES[0])[0])
    bad["metrics"]["it_per_s"] = 0
    assert not validator.is_valid(bad)
    with pytest.raises(RecordError, match=re.escape("metrics.it_per_s must be a number > 0, not 0")):
        check_record(bad)


# --------------------------------------------------------------------------- the probes' entry models
def test_built_in_probes_type_their_entries():
    models = entry_models()
    for name in ("stability", "loss", "memory", "svd", "bottleneck", "features", "epoch_costs"):
        assert issubclass(models[name], ProbeEntry), name
    assert "criterion_cv_below_limit" in models["stability"].model_fields
    assert "criterion_loss_decrease_met" in models["loss"].model_fields
    source = (REPO / "hjepa_bench" / "record_model.py").read_text()
    assert not [n for n in build_plugins().probes() if f'"{n}"' in source], "the core names a built-in probe"


class _Reading(ProbeEntry):
    celsius: float | MISSING = MISSING


class _ThermoProbe(Probe):
    name = "thermo"
    entry_model = _Reading


def test_a_plugin_probe_types_its_entry_and_the_results_reader_asks_it(tmp_path):
    import types

    from hjepa_bench import hookimpl

    @hookimpl
    def hjepa_bench_register_probes(register):
        register(_ThermoProbe())

    plugin = types.ModuleType("thermo")
    plugin.hjepa_bench_register_probes = hjepa_bench_register_probes
    plugins = build_plugins(objects=[("thermo", plugin)])
    models = entry_models(plugins)
    assert models["thermo"] is _Reading and issubclass(models["thermo"], BaseModel)
    record = loads(_v1_lines(V1_FILES[0])[0])
    record["probes"]["thermo"] = {"status": "ok", "celsius": "hot", "anything": [1]}
    check_record(record)  # the record's own schema knows only the envelope
    with pytest.raises(RecordError, match=re.escape('probes.thermo.celsius must be a number, not "hot"')):
        check_result(record, models)
    with pytest.raises(RecordError, match=re.escape('probes.thermo.celsius must be a number, not "hot"')):
        check_probe_entry("thermo", record["probes"]["thermo"], _Reading)
    good = copy.deepcopy(record)
    good["probes"]["thermo"]["celsius"] = 41
    check_result(good, models)
    (tmp_path / "results.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(record) + "\n")
    loaded = read_results(tmp_path / "results.jsonl", models=models)
    assert len(loaded.records) == 1 and loaded.records[0]["probes"]["thermo"]["anything"] == [1]
    assert [s.line for s in loaded.skipped] == [2] and "probes.thermo.celsius" in loaded.skipped[0].reason
