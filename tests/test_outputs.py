"""Per-image output files: the score tables, map files and mask files.

Files are read back with readers other than skpadim's (the csv and json modules, numpy,
Pillow), and the 16-bit PNG encoding is checked against its documented formula.
"""

import csv
import json
import math
import os

import numpy as np
import pytest
from PIL import Image

from skpadim.exceptions import ConfigurationError, DatasetError, InvalidImageError
from skpadim.outputs import (
    DEFAULT_COLUMNS,
    ResultsWriter,
    load_map,
    save_map,
    save_mask,
    verdict,
)
from skpadim.preprocessing import transform_masks

COLUMNS = DEFAULT_COLUMNS + ("defect_type", "label", "map", "ok")
ROWS = [
    {"path": "test/crack/000.png", "anomaly_score": 3.25, "normalized_score": 1.625,
     "verdict": "anomalous", "image_threshold": 2.0, "defect_type": "crack", "label": 1,
     "map": "maps/000.npy", "ok": True},
    {"path": "test/good/001.png", "anomaly_score": np.float32(0.1), "normalized_score": None,
     "verdict": "normal", "image_threshold": 2.0, "defect_type": "good", "label": np.int64(0),
     "ok": False},
    {"path": "test/good/002.png", "anomaly_score": float("nan"), "image_threshold": 2.0,
     "label": 0},
]


def _write(out, rows, **kwargs):
    with ResultsWriter(out, columns=COLUMNS, **kwargs) as writer:
        for row in rows:
            writer.write(row)
    return writer


def _read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_csv_and_jsonl_hold_the_same_rows_with_typed_values(tmp_path):
    writer = _write(tmp_path, ROWS)
    assert writer.n_rows == 3
    table, lines = _read_csv(tmp_path / "scores.csv"), _read_jsonl(tmp_path / "scores.jsonl")
    assert len(table) == len(lines) == 3
    assert list(table[0]) == list(COLUMNS) and all(list(line) == list(COLUMNS)
                                                   for line in lines)
    first, second, third = lines
    assert first == {**ROWS[0]}  # every value typed as given
    assert isinstance(first["label"], int) and isinstance(first["anomaly_score"], float)
    assert second["anomaly_score"] == pytest.approx(0.1) and second["label"] == 0
    assert second["normalized_score"] is None and second["map"] is None
    assert second["ok"] is False
    assert third["anomaly_score"] is None  # NaN: null, not the invalid JSON NaN
    # The CSV spells the same values: numbers that read back equal, empty for null.
    for row, line in zip(table, lines):
        for name in COLUMNS:
            value = line[name]
            if value is None:
                assert row[name] == ""
            elif isinstance(value, bool):
                assert row[name] == ("true" if value else "false")
            elif isinstance(value, (int, float)):
                assert float(row[name]) == value
            else:
                assert row[name] == value
    # float32 scores keep their float32 value, written in the shortest exact form.
    assert float(table[1]["anomaly_score"]) == float(np.float32(0.1))


def test_rows_reach_the_temporary_files_as_they_come(tmp_path):
    with ResultsWriter(tmp_path) as writer:
        for i in range(3000):
            writer.write(path=f"images/{i:05d}.png", anomaly_score=i / 7)
        # Streamed, not kept: the hidden temporary files beside the targets already hold
        # most of the rows, before the block ends.
        temps = {name: os.path.getsize(tmp_path / name) for name in os.listdir(tmp_path)}
        assert len(temps) == 2 and all(name.startswith(".scores.") for name in temps)
        assert all(size > 50_000 for size in temps.values())
        assert not os.path.exists(tmp_path / "scores.csv")  # not until the block succeeds
    assert len(_read_jsonl(tmp_path / "scores.jsonl")) == 3000
    assert sorted(os.listdir(tmp_path)) == ["scores.csv", "scores.jsonl"]


def test_a_crash_inside_the_writer_leaves_the_previous_files_untouched(tmp_path):
    _write(tmp_path, ROWS)
    before = {name: (tmp_path / name).read_bytes() for name in ("scores.csv", "scores.jsonl")}
    with pytest.raises(RuntimeError, match="scorer failed"):
        with ResultsWriter(tmp_path, columns=COLUMNS) as writer:
            writer.write(ROWS[1])
            raise RuntimeError("the scorer failed")
    after = {name: (tmp_path / name).read_bytes() for name in before}
    assert after == before
    assert sorted(os.listdir(tmp_path)) == ["scores.csv", "scores.jsonl"]  # no temp files


def test_a_bad_row_is_refused_and_the_files_stay(tmp_path):
    _write(tmp_path, ROWS[:1])
    before = (tmp_path / "scores.jsonl").read_bytes()
    with pytest.raises(ConfigurationError, match="columns="):
        _write(tmp_path, [{"path": "a.png", "colour": "red"}])
    with pytest.raises(ConfigurationError, match="got a list"):
        _write(tmp_path, [{"path": "a.png", "anomaly_score": [1.0]}])
    assert (tmp_path / "scores.jsonl").read_bytes() == before


def test_without_columns_the_first_row_adds_its_names_after_the_defaults(tmp_path):
    with ResultsWriter(tmp_path) as writer:
        writer.write(anomaly_score=1.5, path="a.png", defect_type="crack", overlay="o/a.png")
        writer.write(path="b.png", defect_type="good")
    assert writer.fieldnames == DEFAULT_COLUMNS + ("defect_type", "overlay")
    table, lines = _read_csv(tmp_path / "scores.csv"), _read_jsonl(tmp_path / "scores.jsonl")
    assert list(table[0]) == list(lines[0]) == list(writer.fieldnames)
    assert lines[1] == {**dict.fromkeys(writer.fieldnames), "path": "b.png",
                        "defect_type": "good"}
    # A name the first row did not have is refused, and the previous files stay.
    before = (tmp_path / "scores.csv").read_bytes()
    with pytest.raises(ConfigurationError, match="fixed by the first row"):
        with ResultsWriter(tmp_path) as writer:
            writer.write(path="a.png")
            writer.write(path="b.png", panel="p/b.png")
    assert (tmp_path / "scores.csv").read_bytes() == before
    # No row at all: the header alone, and an empty JSON Lines file.
    with ResultsWriter(tmp_path / "empty"):
        pass
    assert (tmp_path / "empty" / "scores.csv").read_text().strip() == ",".join(
        DEFAULT_COLUMNS)
    assert (tmp_path / "empty" / "scores.jsonl").read_text() == ""


def test_writer_settings_are_checked(tmp_path):
    with pytest.raises(ConfigurationError, match="more than once"):
        ResultsWriter(tmp_path, columns=("path", "path")).__enter__()
    with pytest.raises(ConfigurationError, match="different names"):
        ResultsWriter(tmp_path, csv_name="x", jsonl_name="x").__enter__()
    with pytest.raises(RuntimeError, match="with block"):
        ResultsWriter(tmp_path).write(path="a.png")
    # One of the two files alone.
    with ResultsWriter(tmp_path / "only", csv_name=None) as writer:
        writer.write(path="a.png", anomaly_score=1.0)
    assert os.listdir(tmp_path / "only") == ["scores.jsonl"]


def test_verdict_follows_predict():
    from skpadim import PatchGaussian

    X = np.random.RandomState(0).normal(size=(40, 4, 2, 2))
    model = PatchGaussian().fit(X)
    threshold = -model.offset_
    scores = -model.score_samples(X)
    expected = np.where(model.predict(X) == -1, "anomalous", "normal")
    assert [verdict(s, threshold) for s in scores] == expected.tolist()
    assert verdict(threshold, threshold) == "normal"


def test_npy_maps_round_trip_exactly_with_nan(tmp_path):
    rng = np.random.RandomState(0)
    amap = rng.rand(17, 23).astype(np.float32) * 7
    amap[:3] = np.nan
    path = save_map(tmp_path / "maps" / "a.npy", amap)
    np.testing.assert_array_equal(load_map(path), amap)  # NaN compare equal here
    assert load_map(path).dtype == np.float32
    raw = np.load(path, allow_pickle=False)
    assert raw.dtype == np.float32 and np.isnan(raw[:3]).all()


def test_png16_maps_follow_the_documented_encoding(tmp_path):
    rng = np.random.RandomState(1)
    vmax = 4.0
    amap = rng.rand(20, 30) * 5 - 0.5  # some values below 0 and above vmax
    amap[0, :5] = np.nan
    path = save_map(tmp_path / "a.png", amap, "png16", vmax=vmax)
    with Image.open(path) as png:
        codes, text = np.array(png).astype(np.int64), dict(png.text)
    assert float(text["vmax"]) == vmax
    # The encoding, computed here from its description: 0 unknown, 1..65535 over [0, vmax].
    stored = amap.astype(np.float32).astype(np.float64)  # maps are stored as float32
    expected = 1 + np.rint(np.clip(np.nan_to_num(stored), 0, vmax) / vmax * 65534)
    expected[np.isnan(amap)] = 0
    np.testing.assert_array_equal(codes, expected)
    decoded = load_map(path)
    assert decoded.dtype == np.float32
    assert (np.isnan(decoded) == np.isnan(amap)).all()
    known = ~np.isnan(amap)
    # Within the documented precision; saturated outside [0, vmax].
    np.testing.assert_allclose(decoded[known], np.clip(amap[known], 0, vmax),
                               atol=vmax / 65534, rtol=0)
    assert decoded[known].max() == pytest.approx(vmax) and decoded[known].min() == 0


def test_png16_default_vmax_is_the_map_maximum(tmp_path):
    amap = np.array([[0.0, 0.5], [1.25, np.nan]])
    path = save_map(tmp_path / "a.png", amap, "png16")
    with Image.open(path) as png:
        assert float(png.text["vmax"]) == 1.25
    np.testing.assert_allclose(load_map(path), amap, atol=1.25 / 65534)


@pytest.mark.parametrize("kwargs, message", [
    ({"format": "tiff"}, "format must be"),
    ({"format": "png16", "vmax": 0.0}, "positive finite"),
    ({"format": "png16", "vmax": math.inf}, "positive finite"),
])
def test_bad_map_settings_are_refused(tmp_path, kwargs, message):
    with pytest.raises(ConfigurationError, match=message):
        save_map(tmp_path / "a", np.ones((2, 2)), **kwargs)


def test_only_map_files_load_as_maps(tmp_path):
    with pytest.raises(InvalidImageError, match="2-D"):
        save_map(tmp_path / "a.npy", np.ones((2, 2, 2)))
    mask = save_mask(tmp_path / "mask.png", np.eye(3, dtype=bool))
    with pytest.raises(DatasetError, match="not a 16-bit map"):
        load_map(mask)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DatasetError, match="neither"):
        load_map(tmp_path / "notes.txt")
    with pytest.raises(DatasetError, match="not found"):
        load_map(tmp_path / "missing.npy")


def test_mask_png_is_8_bit_0_and_255_with_unknown_as_0(tmp_path):
    amap = np.array([[0.1, 0.9, np.nan], [0.6, 0.4, 0.7]])
    path = save_mask(tmp_path / "m" / "mask.png", amap > 0.5)
    with Image.open(path) as png:
        assert png.mode == "L" and png.format == "PNG"
        values = np.asarray(png)
    np.testing.assert_array_equal(values, [[0, 255, 0], [255, 0, 255]])
    # A float mask: non-zero is defect, NaN is not.
    path = save_mask(tmp_path / "float.png", np.array([[np.nan, 2.0], [0.0, -1.0]]))
    np.testing.assert_array_equal(np.asarray(Image.open(path)), [[0, 255], [0, 255]])
    # The file reads back as ground truth, as a data set's masks do.
    assert transform_masks([str(tmp_path / "m" / "mask.png")]).tolist() == [
        (values == 255).tolist()]
