"""`emoserve bench`: the paired backends × precisions table (the --load run is in tests/test_engine.py)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from emoserve.cli import app
from emoserve.cli.bench_paired import System, make_report, markdown


def test_speed_up_is_the_median_of_paired_ratios_and_accuracy_is_against_torch_exact():
    systems = [System("FunASR generate (ncpu=4)", "funasr", "4"), System("torch exact", "torch"),
               System("onnxruntime int8", "onnxruntime", "fast", "int8")]
    funasr = np.array([[1.0, 2.0, 4.0]])
    times = {"FunASR generate (ncpu=4)": funasr, "torch exact": funasr / np.array([[2.0, 2.0, 10.0]]),
             "onnxruntime int8": funasr / 4}
    exact = [np.array([0.7, 0.3]), np.array([0.4, 0.6]), np.array([0.5, 0.5])]
    scores = {"FunASR generate (ncpu=4)": exact, "torch exact": exact,
              "onnxruntime int8": [np.array([0.6, 0.4]), np.array([0.7, 0.3]), np.array([0.5, 0.5])]}
    info = {s.name: {"startup_s": 1.5, "execution": s.backend} for s in systems}
    report = make_report("random:tiny", {}, systems, times, scores, info, dict.fromkeys(times, 100.0),
                         {"openvino bf16": "no native bf16"}, 3.0, {})
    rows = {r["system"]: r for r in report["rows"]}
    assert rows["torch exact"]["speedup_vs_funasr"] == 2.0  # the median ratio, not the ratio of medians (4.0)
    assert rows["onnxruntime int8"]["speedup_vs_funasr"] == 4.0
    assert rows["onnxruntime int8"]["label_agreement"] == pytest.approx(2 / 3)
    assert rows["onnxruntime int8"]["max_score_error"] == pytest.approx(0.3)
    assert rows["torch exact"]["clips_per_s"] == pytest.approx(2.0)  # one over its median time, 0.5 s


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="onnxruntime is not installed")
def test_quick_run_writes_one_table_naming_the_cpu_with_every_column(tmp_path):
    result = CliRunner().invoke(app, ["bench", "--quick", "--clips", "2", "--no-baseline", "--systems",
                                      "torch exact,onnxruntime fp32", "--output-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    [report_file] = tmp_path.glob("bench-random-tiny-*.json")
    report = json.loads(report_file.read_text())
    assert [r["system"] for r in report["rows"]] == ["torch exact", "onnxruntime fp32"]
    assert report["machine"]["cpu_features"] and report["skipped"]["FunASR"] == "not asked for"
    graph = report["rows"][1]
    assert graph["execution"] == "onnxruntime fp32 graph, CPUExecutionProvider"
    assert graph["label_agreement"] == 1.0 and graph["max_score_error"] <= 1e-5
    assert all(r["peak_rss_mib"] > 0 and r["startup_s"] > 0 and r["clips_per_s"] > 0 for r in report["rows"])
    assert markdown(report).count("| torch exact |") == 1 and report_file.with_suffix(".md").exists()
