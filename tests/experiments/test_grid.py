"""Grid runner: a fake cell runner (its metric is a known formula of method, ratio and seed) checks the commands,
the resuming, the failure handling and the tables; one slow test runs a tiny grid through the real cls_busi
bundle on synthetic data."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from usfm_monai.apps.experiments.grid import GridError, load_preset, plan_grid, run_grid

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _expected(score, ratio, seed):
    return score + 0.1 * ratio + 0.01 * seed


class FakeRunner:
    """Stands in for ``python -m monai.bundle run``: records calls, writes what the bundles would write."""

    def __init__(self, fail_methods=(), fail_pretraining=False):
        self.calls = []
        self.fail_methods = set(fail_methods)
        self.fail_pretraining = fail_pretraining

    def __call__(self, cmd, log_path, env):
        configs = json.loads(cmd[cmd.index("--config_file") + 1])
        with open(cmd[cmd.index("--args_file") + 1]) as f:
            args = json.load(f)
        kind = "pretrain" if any("pretrain_fake" in c for c in configs) else (
            "eval" if any(c.endswith("evaluate.json") for c in configs) else "train")
        self.calls.append((kind, args, configs))
        with open(log_path, "w") as log:
            log.write(f"fake {kind}\n")
        root = args["bundle_root"]
        if kind == "pretrain":
            if self.fail_pretraining:
                return 3
            os.makedirs(os.path.join(root, "models"), exist_ok=True)
            open(os.path.join(root, "models", "usfm_encoder.pt"), "wb").close()
            return 0
        if args.get("method_tag") in self.fail_methods:
            return 1
        if kind == "eval":
            with open(args["datalist_file"]) as f:
                ratio = json.load(f)["metadata"]["subset"]["ratio"]
            value = _expected(args["score"], ratio, args["seed"])
            os.makedirs(os.path.join(root, "eval"), exist_ok=True)
            with open(os.path.join(root, "eval", "report.json"), "w") as f:
                json.dump({"metrics": {"f1": value, "acc": {"mean": 2 * value, "std": 0.0}}}, f)
        return 0


def _make_preset(tmp_path, methods=None, pretraining=False, **task_extra):
    bundle = tmp_path / "repo" / "bundles" / "fake"
    (bundle / "configs").mkdir(parents=True)
    for name in ("train.json", "quick.json", "evaluate.json", "baseline.json"):
        (bundle / "configs" / name).write_text("{}")
    (tmp_path / "repo" / "experiments").mkdir()
    items = [{"image": f"img{i}.png", "label": i % 2} for i in range(20)]
    (tmp_path / "repo" / "cls.json").write_text(json.dumps({"training": items, "test": items[:2]}))
    methods = methods or {
        "A": {"overrides": {"score": 0.5, "method_tag": "A"}},
        "B": {"config_files": ["configs/baseline.json"], "overrides": {"score": 0.2, "method_tag": "B"}},
    }
    preset = {
        "name": "test",
        "seeds": [0, 1],
        "ratios": [0.2, 1.0],
        "variables": {"data": str(tmp_path / "repo")},
        "tasks": {
            "cls": {
                "bundle": "bundles/fake",
                "config_files": ["configs/train.json", "configs/quick.json"],
                "eval_config_files": ["configs/evaluate.json"],
                "metrics_file": "eval/report.json",
                "plot_metric": "f1",
                "datalist_file": "cls.json",
                "dataset_dir": "${data}",
                "overrides": {"epochs": 1},
                "methods": methods,
                **task_extra,
            }
        },
        "ablation": {"methods": ["A", "B"], "ratio": 1.0},
    }
    if pretraining:
        pre = tmp_path / "repo" / "bundles" / "pretrain_fake" / "configs"
        pre.mkdir(parents=True)
        (pre / "train.json").write_text("{}")
        preset["pretraining"] = {"P": {"bundle": "bundles/pretrain_fake", "config_files": ["configs/train.json"],
                                       "overrides": {"epochs": 2}}}
    path = tmp_path / "repo" / "experiments" / "preset.json"
    path.write_text(json.dumps(preset))
    return str(path)


def _read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_runs_every_cell_then_skips_finished_ones(tmp_path):
    preset = _make_preset(tmp_path)
    out = str(tmp_path / "grid")
    runner = FakeRunner()
    summary = run_grid(preset, out, runner=runner)
    assert summary["num_cells"] == 8 and summary["num_run"] == 8 and not summary["failures"]
    assert [k for k, _, _ in runner.calls] == ["train", "eval"] * 8

    # every method of one ratio reads the same subset file; bundle roots differ per cell
    by_ratio = {}
    for kind, args, configs in runner.calls:
        with open(args["datalist_file"]) as f:
            by_ratio.setdefault(json.load(f)["metadata"]["subset"]["ratio"], set()).add(args["datalist_file"])
        assert args["dataset_dir"] == str(tmp_path / "repo") and args["epochs"] == 1
        method = args["method_tag"]
        expected_configs = ["train.json", "quick.json"] + (["baseline.json"] if method == "B" else [])
        expected_configs += ["evaluate.json"] if kind == "eval" else []
        assert [os.path.basename(c) for c in configs] == expected_configs
    assert all(len(paths) == 1 for paths in by_ratio.values()) and set(by_ratio) == {0.2, 1.0}
    roots = {args["bundle_root"] for _, args, _ in runner.calls}
    assert roots == {os.path.join(out, "cells", "cls", m, f"ratio{r:g}", f"seed{s}")
                     for m in "AB" for r in (0.2, 1.0) for s in (0, 1)}

    rows = _read_csv(summary["results_csv"])
    assert len(rows) == 8
    for row in rows:
        score = 0.5 if row["method"] == "A" else 0.2
        value = _expected(score, float(row["ratio"]), int(row["seed"]))
        assert float(row["f1"]) == pytest.approx(value) and float(row["acc"]) == pytest.approx(2 * value)
        assert int(row["num_train_items"]) == (4 if float(row["ratio"]) == 0.2 else 20)
    stats = {(r["method"], float(r["ratio"]), r["metric"]): r for r in _read_csv(summary["summary_csv"])}
    for method, score in (("A", 0.5), ("B", 0.2)):
        values = [_expected(score, 0.2, s) for s in (0, 1)]
        assert float(stats[(method, 0.2, "f1")]["mean"]) == pytest.approx(np.mean(values))
        assert float(stats[(method, 0.2, "f1")]["std"]) == pytest.approx(np.std(values, ddof=1))
    for plot in summary["plots"]:
        with Image.open(plot) as im:
            assert im.format == "PNG" and im.size[0] > 100
    assert {os.path.basename(p) for p in summary["plots"]} == {"label_efficiency.png", "ablation.png"}

    # rerun: nothing is recomputed and the table is the same
    again = FakeRunner()
    summary2 = run_grid(preset, out, runner=again)
    assert again.calls == [] and summary2["num_finished"] == 8 and summary2["num_run"] == 0
    assert _read_csv(summary2["results_csv"]) == rows

    # a cell whose result was lost but whose training finished is only evaluated again
    os.remove(os.path.join(out, "cells", "cls", "B", "ratio0.2", "seed1", "result.json"))
    third = FakeRunner()
    run_grid(preset, out, runner=third)
    assert [(k, a["method_tag"], a["seed"]) for k, a, _ in third.calls] == [("eval", "B", 1)]


def test_failing_cell_is_reported_and_grid_continues(tmp_path):
    preset = _make_preset(tmp_path)
    out = str(tmp_path / "grid")
    with pytest.raises(GridError) as info:
        run_grid(preset, out, runner=FakeRunner(fail_methods={"B"}))
    failures = info.value.failures
    assert len(failures) == 4 and {f["method"] for f in failures} == {"B"}
    assert all(f["log"].endswith("train.log") and os.path.isfile(f["log"]) for f in failures)
    assert "train.log" in str(info.value)
    rows = _read_csv(os.path.join(out, "results.csv"))
    assert {r["method"] for r in rows} == {"A"} and len(rows) == 4
    with open(os.path.join(out, "results.json")) as f:
        assert len(json.load(f)["failures"]) == 4
    # after the fix only the failed cells run
    runner = FakeRunner()
    summary = run_grid(preset, out, runner=runner)
    assert {a["method_tag"] for _, a, _ in runner.calls} == {"B"} and len(runner.calls) == 8
    assert summary["num_finished"] == 8 and not summary["failures"]


def test_pretraining_runs_once_and_feeds_methods(tmp_path):
    methods = {
        "USFM": {"overrides": {"pretrained": "${pretrain:P}", "score": 0.9, "method_tag": "USFM"}},
        "scratch": {"overrides": {"score": 0.1, "method_tag": "scratch"}},
    }
    preset = _make_preset(tmp_path, methods=methods, pretraining=True)
    out = str(tmp_path / "grid")
    runner = FakeRunner()
    run_grid(preset, out, runner=runner, seeds=[0])
    kinds = [k for k, _, _ in runner.calls]
    assert kinds[0] == "pretrain" and kinds.count("pretrain") == 1 and len(kinds) == 1 + 2 * 4
    encoder = os.path.join(out, "pretrain", "P", "models", "usfm_encoder.pt")
    assert {a.get("pretrained") for k, a, _ in runner.calls if k != "pretrain" and a["method_tag"] == "USFM"} == {encoder}
    assert runner.calls[0][1] == {"epochs": 2, "bundle_root": os.path.join(out, "pretrain", "P")}
    again = FakeRunner()
    run_grid(preset, out, runner=again, seeds=[0])
    assert again.calls == []
    # only the methods selected decide which pretraining runs
    fresh = FakeRunner()
    run_grid(preset, str(tmp_path / "grid2"), runner=fresh, methods=["scratch"], seeds=[0])
    assert "pretrain" not in [k for k, _, _ in fresh.calls]


def test_failed_pretraining_skips_its_cells(tmp_path):
    methods = {
        "USFM": {"overrides": {"pretrained": "${pretrain:P}", "score": 0.9, "method_tag": "USFM"}},
        "scratch": {"overrides": {"score": 0.1, "method_tag": "scratch"}},
    }
    preset = _make_preset(tmp_path, methods=methods, pretraining=True)
    runner = FakeRunner(fail_pretraining=True)
    with pytest.raises(GridError, match="pretrain.log"):
        run_grid(preset, str(tmp_path / "grid"), runner=runner, seeds=[0])
    assert {a["method_tag"] for k, a, _ in runner.calls if k != "pretrain"} == {"scratch"}


def test_method_ratios_limit_its_cells_and_its_plot(tmp_path, monkeypatch):
    methods = {
        "USFM": {"overrides": {"pretrained": "${pretrain:P}", "score": 0.9, "method_tag": "USFM"}},
        "USFM-woF": {"overrides": {"score": 0.7, "method_tag": "woF"}, "ratios": [1.0]},
        "only-small": {"overrides": {"pretrained": "${pretrain:P}", "score": 0.3, "method_tag": "small"},
                       "ratios": [0.2]},
    }
    preset = _make_preset(tmp_path, methods=methods, pretraining=True)
    out = str(tmp_path / "grid")
    summary = run_grid(preset, out, runner=FakeRunner(), seeds=[0])
    rows = _read_csv(summary["results_csv"])
    assert sorted((r["method"], float(r["ratio"])) for r in rows) == [
        ("USFM", 0.2), ("USFM", 1.0), ("USFM-woF", 1.0), ("only-small", 0.2)]
    # a method limited to ratios outside the selection plans no cell and needs no pretraining
    plan = plan_grid(load_preset(preset), str(tmp_path / "g2"), methods=["only-small"], ratios=[1.0])
    assert plan["cells"] == [] and plan["pretraining"] == []
    # the one-ratio methods are no lines in Fig. 10: only USFM is drawn there
    from usfm_monai.apps.experiments import grid as grid_module

    drawn = []
    real = grid_module.plot_label_efficiency
    monkeypatch.setattr(grid_module, "plot_label_efficiency", lambda rows, path, panels, methods=None, titles=None: (
        drawn.append(methods) or real(rows, path, panels, methods=methods, titles=titles)))
    run_grid(preset, out, runner=FakeRunner(), seeds=[0])
    assert drawn == [["USFM"]]


def test_dry_run_writes_nothing(tmp_path, capsys):
    preset = _make_preset(tmp_path)
    out = tmp_path / "grid"
    plan = run_grid(preset, str(out), dry_run=True, runner=FakeRunner(), ratios=[0.2])
    assert len(plan["cells"]) == 4 and not out.exists()
    assert "cell 4/4" in capsys.readouterr().out


@pytest.mark.parametrize(
    "change, error, match",
    [
        ({"typo": 1}, KeyError, "typo"),
        ({"overrides": {"datalist_file": "x.json"}}, ValueError, "datalist_file"),
        ({"dataset_dir": "${nowhere}"}, KeyError, "nowhere"),
        ({"methods": {"bad name": {}}}, ValueError, "bad name"),
        ({"methods": {"A": {"config_files": ["configs/missing.json"]}}}, FileNotFoundError, "missing.json"),
        ({"methods": {"A": {"overrides": {"pretrained": "${pretrain:Q}"}}}}, KeyError, "pretrain:Q"),
        ({"methods": {"A": {"ratios": [0.5]}}}, ValueError, "preset's ratios"),
        ({"methods": {"A": {"ratios": []}}}, ValueError, "non-empty"),
    ],
    ids=["unknown-key", "reserved-override", "undefined-variable", "bad-name", "missing-config", "unknown-pretraining",
         "method-ratio-not-in-preset", "method-ratios-empty"],
)
def test_bad_presets(tmp_path, change, error, match):
    preset = _make_preset(tmp_path, **{k: v for k, v in change.items() if k != "methods"})
    if "methods" in change:
        data = json.loads(open(preset).read())
        data["tasks"]["cls"]["methods"] = change["methods"]
        with open(preset, "w") as f:
            json.dump(data, f)
    with pytest.raises(error, match=match):
        plan_grid(load_preset(preset), str(tmp_path / "grid"))


def test_shipped_presets_plan(tmp_path):
    for name in ("busi_compact.json", "paper.json"):
        plan = plan_grid(load_preset(os.path.join(REPO, "experiments", name)), str(tmp_path / name))
        assert plan["cells"] and all(os.path.isfile(c) for cell in plan["cells"] for c in json.loads(
            cell["train_cmd"][cell["train_cmd"].index("--config_file") + 1]))


@pytest.mark.slow
def test_tiny_grid_through_cls_bundle(tmp_path):
    preset = {
        "name": "tiny", "seeds": [0], "ratios": [0.5, 1.0],
        "tasks": {"cls": {
            "bundle": os.path.join(REPO, "bundles", "cls_busi"),
            "config_files": ["configs/train.json", "configs/quick.json"],
            "eval_config_files": ["configs/evaluate.json"],
            "metrics_file": "eval/classification_report.json", "plot_metric": "f1",
            "synthetic": {"task": "classification", "num_images": 24, "image_size": 40, "seed": 0},
            "overrides": {"image_size": 32, "epochs": 1, "warmup_epochs": 0, "batch_size": 4, "val_batch_size": 8,
                          "num_workers": 0, "encoder_size": "tiny"},
            "methods": {"USFM-scratch": {}, "ViT-ld1": {"config_files": ["configs/baseline_vit_scratch.json"]}},
        }},
    }
    (tmp_path / "experiments").mkdir()
    path = tmp_path / "experiments" / "tiny.json"
    path.write_text(json.dumps(preset))
    summary = run_grid(str(path), str(tmp_path / "grid"))
    rows = _read_csv(summary["results_csv"])
    assert len(rows) == 4 and not summary["failures"]
    with open(tmp_path / "grid" / "data" / "cls" / "datalist.json") as f:
        num_training = len(json.load(f)["training"])
    for row in rows:
        for metric in ("acc", "f1", "recall", "prec"):
            assert 0.0 <= float(row[metric]) <= 1.0
        assert int(row["num_train_items"]) == int(np.floor(float(row["ratio"]) * num_training + 0.5))
        report = os.path.join(tmp_path, "grid", "cells", "cls", row["method"], f"ratio{float(row['ratio']):g}", "seed0",
                              "eval", "classification_report.json")
        with open(report) as f:
            assert json.load(f)["metrics"]["f1"] == pytest.approx(float(row["f1"]))
    with Image.open(summary["plots"][0]) as im:
        assert im.format == "PNG"
    # the CLI entry point resumes: nothing left to run, exit code 0
    result = subprocess.run([sys.executable, "-m", "usfm_monai", "grid", "--preset_file", str(path),
                             "--output_dir", str(tmp_path / "grid")], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "4/4 cells finished, 0 run now" in result.stdout
