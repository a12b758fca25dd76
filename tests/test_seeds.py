"""Multi-seed runner: real ``monai.bundle run`` subprocesses on a tiny fake bundle whose metrics depend on the seed."""

import csv
import json
import os
import statistics

import pytest

from usfm_monai.apps.bundle_runner import read_metrics
from usfm_monai.apps.seeds import run_seeds, summarize_seeds

# "Training" writes a file that only this seed's run can have written; "evaluation" reads it back and writes the
# metrics, so a correct runner must run both configs in order, in the same per-seed bundle root.
TRAIN_CONFIG = {
    "imports": ["$import os"],
    "bundle_root": ".",
    "seed": 0,
    "scale": 1.0,
    "trained_file": "$@bundle_root + '/models/trained.txt'",
    "run": [
        "$os.makedirs(os.path.dirname(@trained_file), exist_ok=True)",
        "$open(@trained_file, 'w').write(str(@seed * @scale))",
    ],
}
EVAL_CONFIG = {
    "imports": ["$import os", "$import json"],
    "metrics_path": "$@bundle_root + '/eval/report.json'",
    "run": [
        "$os.makedirs(os.path.dirname(@metrics_path), exist_ok=True)",
        (
            "$open(@metrics_path, 'w').write(json.dumps({'metrics': {'acc': float(open(@trained_file).read()), "
            "'f1': {'mean': 1.0 - 0.1 * @seed, 'std': 0.0}}}))"
        ),
    ],
}


def _write(path, data):
    with open(path, "w") as f:
        json.dump(data, f)
    return str(path)


@pytest.mark.slow
def test_run_seeds_trains_evaluates_and_summarizes(tmp_path):
    train = _write(tmp_path / "train.json", TRAIN_CONFIG)
    evaluate = _write(tmp_path / "evaluate.json", EVAL_CONFIG)
    out = tmp_path / "runs"
    summary = run_seeds(
        train, seeds=[2, 5], output_dir=str(out), overrides={"scale": 0.5}, metrics_file="eval/report.json",
        eval_config_files=[train, evaluate],
    )
    acc = [2 * 0.5, 5 * 0.5]
    f1 = [1.0 - 0.2, 1.0 - 0.5]
    assert summary["runs"] == {"2": {"acc": acc[0], "f1": pytest.approx(f1[0])},
                               "5": {"acc": acc[1], "f1": pytest.approx(f1[1])}}
    assert summary["metrics"]["acc"]["mean"] == pytest.approx(statistics.mean(acc))
    assert summary["metrics"]["acc"]["std"] == pytest.approx(statistics.stdev(acc))  # sample std over runs
    assert summary["metrics"]["f1"]["std"] == pytest.approx(statistics.stdev(f1))
    assert summary["metrics"]["f1"]["n"] == 2
    # every seed ran in its own bundle root
    for seed in (2, 5):
        with open(out / f"seed_{seed}" / "models" / "trained.txt") as f:
            assert float(f.read()) == seed * 0.5
        assert (out / f"seed_{seed}" / "train.log").is_file() and (out / f"seed_{seed}" / "evaluate.log").is_file()
    with open(out / "seeds_summary.json") as f:
        assert json.load(f)["metrics"] == summary["metrics"]
    with open(out / "seeds_summary.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["seed", "acc", "f1"]
    assert [r[0] for r in rows[1:]] == ["2", "5", "mean", "std"]
    assert float(rows[3][1]) == pytest.approx(statistics.mean(acc))
    assert float(rows[4][2]) == pytest.approx(statistics.stdev(f1))


@pytest.mark.slow
def test_failed_run_reports_log_tail(tmp_path):
    broken = _write(tmp_path / "broken.json", {"bundle_root": ".", "seed": 0, "run": ["$1 / (@seed - @seed)"]})
    with pytest.raises(RuntimeError, match="(?s)seed 0 run.*ZeroDivisionError"):
        run_seeds(broken, seeds=[0], output_dir=str(tmp_path / "runs"), metrics_file="m.json")


def test_summarize_seeds_population_std_and_nan():
    per_seed = {0: {"acc": 0.5}, 1: {"acc": 0.7}, 2: {"acc": float("nan")}}
    out = summarize_seeds(per_seed, ddof=0)
    assert out["acc"]["n"] == 2
    assert out["acc"]["mean"] == pytest.approx(0.6)
    assert out["acc"]["std"] == pytest.approx(statistics.pstdev([0.5, 0.7]))


def test_summarize_seeds_rejects_mismatched_metrics():
    with pytest.raises(ValueError, match="different metrics"):
        summarize_seeds({0: {"acc": 0.5}, 1: {"f1": 0.7}})


def test_read_metrics_formats_and_errors(tmp_path):
    flat = _write(tmp_path / "flat.json", {"metrics": {"acc": 0.8, "mcc": -0.1}})
    summary = _write(tmp_path / "summary.json", {"metrics": {"dsc": {"mean": 0.7, "std": 0.1, "n": 3}}})
    assert read_metrics(flat) == {"acc": 0.8, "mcc": -0.1}
    assert read_metrics(summary) == {"dsc": 0.7}
    with pytest.raises(FileNotFoundError, match="missing.json"):
        read_metrics(str(tmp_path / "missing.json"))
    with pytest.raises(TypeError, match="'acc'"):
        read_metrics(_write(tmp_path / "bad.json", {"metrics": {"acc": "high"}}))


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"seeds": [0, 0]}, ValueError),
        ({"seeds": [0.5]}, TypeError),
        ({"overrides": {"bundle_root": "/x"}}, ValueError),
        ({"config_files": "does_not_exist.json"}, FileNotFoundError),
    ],
    ids=["duplicate-seeds", "float-seed", "reserved-override", "missing-config"],
)
def test_run_seeds_bad_arguments(tmp_path, kwargs, error):
    args = {"config_files": _write(tmp_path / "c.json", TRAIN_CONFIG), "seeds": [0], "output_dir": str(tmp_path)}
    args.update(kwargs)
    with pytest.raises(error):
        run_seeds(**args)
    assert not os.path.exists(tmp_path / "seed_0")  # rejected before anything ran
