"""The MatBench runner writes files matbench itself reads and scores identically (matbench reads only
complete runs, so all 5 folds are run, with the fast baselines)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import need_call

from cloudlib import data
from cloudlib.matbench_run import run_matbench, summarise


def test_results_file_rescored_by_matbench(tmp_path):
    from matbench.bench import MatbenchBenchmark
    from matbench.metadata import mbv01_metadata  # noqa: F401  (matbench's own metadata)
    from matbench.data_ops import score_array

    need_call(data.load_matbench, "matbench_dielectric")
    folds = run_matbench(["matbench_dielectric"], profile="smoke", models=("RF-Magpie", "Dummy"), folds=range(5),
                         out_dir=tmp_path, progress=False)
    assert len(folds) == 10 and set(folds["model"]) == {"RF-Magpie", "Dummy"}
    preds = pd.read_csv(tmp_path / "matbench_smoke_predictions.csv.gz")
    truth = data.load_matbench("matbench_dielectric")["n"]
    for model, slug in (("RF-Magpie", "rf_magpie"), ("Dummy", "dummy")):
        mb = MatbenchBenchmark.from_file(str(tmp_path / f"matbench_smoke_{slug}.json"))
        task = mb.matbench_dielectric
        for fold in range(5):
            stored = task.results[f"fold_{fold}"]
            ids = list(stored["data"])
            assert ids == data.matbench_split("matbench_dielectric", fold)[1]  # the official test ids, in order
            rescored = score_array(truth.loc[ids].to_numpy(), np.array([stored["data"][i] for i in ids]), "regression")
            assert rescored["mae"] == pytest.approx(stored["scores"]["mae"], rel=1e-12)
            ours = preds.query("model == @model and fold == @fold")
            assert np.abs(ours["prediction"] - ours["target"]).mean() == pytest.approx(stored["scores"]["mae"], rel=1e-9)
    s = summarise(folds)
    rf, dummy = s.loc[("matbench_dielectric", "RF-Magpie"), "mae_mean"], s.loc[("matbench_dielectric", "Dummy"), "mae_mean"]
    assert rf < 0.7 * dummy  # a real, failable check that the baseline learns something


def test_cli(tmp_path):
    import subprocess
    import sys

    need_call(data.load_matbench, "matbench_dielectric")
    bad = subprocess.run([sys.executable, "-m", "cloudlib", "matbench", "--models", "Oracle"], capture_output=True, text=True)
    assert bad.returncode == 1 and "unknown models" in bad.stderr
    ok = subprocess.run([sys.executable, "-m", "cloudlib", "matbench", "--profile", "smoke", "--models", "Dummy", "-q"],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "Dummy" in ok.stdout and "0.80" in ok.stdout  # the 5-fold dummy MAE of matbench_dielectric is ~0.809
