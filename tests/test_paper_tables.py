"""benchmarks/paper_tables.py: the report puts the paper's value beside ours on every row,
failed measurements are reported while the rest go on, and a rerun reuses finished ones.

The measurements themselves are replaced by a stand-in that returns known numbers, so these
tests check the bookkeeping and the report in a second; CI runs the real thing with
``--quick``.
"""

import json
import re
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
paper_tables = pytest.importorskip("paper_tables")
paper_values = pytest.importorskip("paper_values")


@pytest.fixture(autouse=True)
def no_collection_between_measurements(monkeypatch):
    """The script frees each model with gc.collect (0.2 s with torch loaded): real
    measurements take far longer, these stand-ins do not."""
    monkeypatch.setattr(paper_tables.gc, "collect", lambda: 0)


def fake_metrics(entry):
    """Distinct, recognisable numbers for each measurement."""
    base = 0.5 + 0.01 * (sum(map(ord, entry.key)) % 40)
    return {"pixel_auroc": base, "pro": base - 0.1, "image_auroc": base + 0.05,
            "infer_s": 0.01, "fit_s": 1.0, "model_bytes": 2e7, "memory_bytes": 3e7}


def run(tmp_path, evaluate_fn, *extra):
    args = paper_tables.parse_args(["--quick", "--out", str(tmp_path), *extra])
    profile = paper_tables.quick_profile(args)
    markdown, failed = paper_tables.run_tables(profile, args, evaluate_fn=evaluate_fn,
                                               log=lambda message: None)
    results = json.loads((tmp_path / "results.json").read_text())
    assert sorted(failed) == sorted(m["key"] for m in results["measurements"]
                                    if m["status"] != "ok")
    return markdown, results


def table_sections(markdown):
    """``{table id: [row cells]}`` of the Markdown tables, header and rule dropped."""
    sections = {}
    for block in re.split(r"^## ", markdown, flags=re.M)[1:]:
        if not block.startswith("Table "):
            continue  # the claims
        table_id = block[len("Table "):].split(":", 1)[0]
        rows = [line for line in block.splitlines() if line.startswith("| ")]
        sections[table_id] = [[c.strip() for c in row.strip("|").split("|")]
                              for row in rows[1:]]
    return sections


def test_every_row_shows_the_papers_value_beside_ours(tmp_path):
    markdown, results = run(tmp_path, fake_metrics)
    sections = table_sections(markdown)
    checked = 0
    for table in results["tables"]:
        metrics = paper_tables.TABLES[table["table"]].metrics
        printed = sections[table["table"]]
        assert len(printed) == len(table["rows"]) > 0
        for row, cells in zip(table["rows"], printed):
            assert cells[0] == row["model"]
            for k, metric in enumerate(metrics):
                ours, paper, diff = cells[2 + 3 * k : 5 + 3 * k]
                value = row["cells"][metric]
                if row["n_expected"] == 0:  # quick mode's demo set has no object class
                    assert ours == "n/a (no classes)"
                else:
                    assert ours != "n/a" and not ours.startswith("n/a ("), (table["table"], row)
                expected, source = paper_values.lookup(
                    table["table"], row["model"], _paper_group(table["table"], row), metric)
                if expected is None:
                    assert paper == "n/a" and diff == "n/a"
                    continue
                digits = paper_tables.METRICS[metric].digits
                assert paper == f"{expected:.{digits}f}" + paper_values.MARKERS[source]
                assert value["paper"] == expected
                if row["n_expected"] == 0:
                    assert diff == "n/a"
                    continue
                assert float(diff) == pytest.approx(value["ours"] - expected,
                                                    abs=10.0 ** -digits)
                checked += 1
    # Every value the paper gives for a quick-mode row was found and printed.
    assert checked >= 40


def _paper_group(table_id, row):
    """STC and the cost tables have one row per model, which the paper gives for "all"."""
    if paper_tables.TABLES[table_id].setting in ("stc", "cost"):
        return "all"
    return row["group"]


def test_every_paper_value_of_tables_i_and_ii_appears(tmp_path):
    markdown, _ = run(tmp_path, fake_metrics, "--tables", "I,II")
    sections = table_sections(markdown)
    for table_id in ("I", "II"):
        rows = {(cells[0], cells[1].split(" (")[0]): cells for cells in sections[table_id]}
        for model, groups in paper_values.PAPER[table_id].items():
            for group, metrics in groups.items():
                printed = rows[(model, group)]
                for k, metric in enumerate(paper_tables.TABLES[table_id].metrics):
                    assert printed[3 + 3 * k] == f"{metrics[metric]:.1f}"


def test_a_failed_measurement_is_reported_and_the_rest_continue(tmp_path):
    calls = []

    def flaky(entry):
        calls.append(entry.key)
        if entry.class_name == "grass" and entry.model == "Layer 2":
            raise RuntimeError("out of memory on purpose")
        return fake_metrics(entry)

    markdown, results = run(tmp_path, flaky, "--tables", "I")
    assert len(calls) == len(set(calls)) > 5
    assert "Layer 2, grass, seed 0: RuntimeError: out of memory on purpose" in markdown
    layer2 = {r["group"]: r for r in results["tables"][0]["rows"] if r["model"] == "Layer 2"}
    # Its group means are over the classes that were measured, and say so.
    assert layer2["all"]["n_ok"] == layer2["all"]["n_expected"] - 1 > 0
    assert f"| Layer 2 | all ({layer2['all']['n_ok']}/{layer2['all']['n_expected']}) |" in markdown
    failed = [m for m in results["measurements"] if m["status"] == "failed"]
    assert len(failed) == 1 and "Traceback" in failed[0]["traceback"]


def test_a_rerun_reuses_finished_measurements_and_retries_failed_ones(tmp_path):
    def failing_once(entry):
        if entry.model == "Layer 3" and not (tmp_path / "failed-once").exists():
            (tmp_path / "failed-once").touch()
            raise RuntimeError("interrupted")
        return fake_metrics(entry)

    first, _ = run(tmp_path, failing_once, "--tables", "I")
    assert "interrupted" in first
    retried = []
    second, results = run(tmp_path, lambda e: retried.append(e.key) or fake_metrics(e),
                          "--tables", "I")
    assert len(retried) == 1 and "interrupted" not in second
    assert all(m["status"] == "ok" for m in results["measurements"])


def test_results_of_another_skpadim_version_are_measured_again(tmp_path):
    run(tmp_path, fake_metrics, "--tables", "I")
    cache = tmp_path / "cache.jsonl"
    records = [json.loads(line) for line in cache.read_text().splitlines()]
    records[0]["skpadim"] = "0.0.0"
    cache.write_text("".join(json.dumps(r) + "\n" for r in records))
    again = []
    run(tmp_path, lambda e: again.append(e.key) or fake_metrics(e), "--tables", "I")
    assert again == [records[0]["key"]]
