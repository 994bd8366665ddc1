"""Report writers (atomic JSON/CSV/PNG, TensorBoard), the Ignite handler, the bundle evaluator and the CLI."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine

import monai_gmr
import monai_gmr.utils as mutils
from monai_gmr.evaluation import (
    RobustnessResult,
    RotationRobustnessEvaluator,
    RotationRobustnessHandler,
    load_result,
    plot_polar,
    rotation_robustness,
    save_json,
    write_report,
)
from monai_gmr.evaluation.__main__ import main as cli_main

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: tiny, overhead-bound tensors


def _result(name: str = "gmr", shift: float = 0.0) -> RobustnessResult:
    angles = [0.0, 90.0, 180.0, 270.0]
    return RobustnessResult(
        model_name=name,
        task="segmentation",
        metrics=["dice", "auc"],
        angles=angles,
        flips=["h"],
        per_angle={"dice": [0.8 - shift, 0.7, 0.75, 0.8], "auc": [0.9, 0.9, 0.9, 0.9]},
        per_flip={"h": {"dice": 0.78, "auc": 0.9}},
        n_images=3,
    )


def _listing(d) -> list[str]:
    return sorted(os.listdir(d))


def test_write_report_json_csv_png(tmp_path):
    r = _result()
    paths = write_report(r, tmp_path, compare=[_result("plain", 0.1)])
    assert _listing(tmp_path) == ["robustness.csv", "robustness.json", "robustness_polar.png"]
    back = load_result(paths["json"])
    assert back.per_angle == r.per_angle and back.per_flip == r.per_flip
    d = json.loads(paths["json"].read_text())
    assert d["summary"]["dice"]["worst_angle"] == 90.0
    assert d["summary"]["dice"]["std"] == pytest.approx(torch.tensor([0.8, 0.7, 0.75, 0.8]).std(unbiased=False).item())
    rows = list(csv.DictReader(io.StringIO(paths["csv"].read_text())))
    assert [row["view"] for row in rows[:5]] == ["rot0", "rot90", "rot180", "rot270", "flip_h"]
    assert float(rows[1]["dice"]) == 0.7 and rows[4]["flip"] == "h"
    summary_rows = {row["view"]: row for row in rows if row["kind"] == "summary"}
    assert list(summary_rows) == list(d["summary"]["dice"])  # every JSON statistic, at_0 included
    assert float(summary_rows["at_0"]["dice"]) == pytest.approx(0.8)
    # negative angles get the view names of per_view() and the TTA inferer
    neg = RobustnessResult("m", "segmentation", ["dice"], [-10.0, 0.0], [], {"dice": [0.5, 0.6]}, {}, 1)
    views = [row["view"] for row in csv.DictReader(io.StringIO(monai_gmr.evaluation.report.result_to_csv(neg)))]
    assert views[:2] == list(neg.per_view()) == ["rotm10", "rot0"]
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_json_write_failing_midway_leaves_old_report_whole(tmp_path, monkeypatch):
    target = tmp_path / "robustness.json"
    save_json(_result(), target)
    old = target.read_bytes()

    def boom(fd):
        raise OSError("disk full")

    monkeypatch.setattr(mutils.os, "fsync", boom)  # fails after the bytes were written to the temp file
    with pytest.raises(OSError, match="disk full"):
        save_json(_result("other"), target)
    assert target.read_bytes() == old
    assert _listing(tmp_path) == ["robustness.json"]  # no temp file left behind
    with pytest.raises(OSError):
        save_json(_result(), tmp_path / "new.json")
    assert not (tmp_path / "new.json").exists() and _listing(tmp_path) == ["robustness.json"]


def test_png_write_failing_midway_leaves_nothing(tmp_path, monkeypatch):
    import matplotlib.figure

    def partial_savefig(self, fname, *a, **k):
        with open(fname, "wb") as f:
            f.write(b"\x89PNG half")
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", partial_savefig)
    with pytest.raises(RuntimeError, match="renderer"):
        plot_polar([_result(), _result("b")], tmp_path / "polar.png")
    assert _listing(tmp_path) == []


def test_plot_metric_errors(tmp_path):
    with pytest.raises(ValueError, match="metrics"):
        plot_polar([_result()], tmp_path / "p.png", metrics=["iou"])
    with pytest.raises(ValueError, match="results"):
        plot_polar([], tmp_path / "p.png")


def test_plot_without_a_common_metric(tmp_path):
    """Results sharing no metric (a segmentation and a classification report), or metrics=[], reached
    matplotlib's 'Number of columns must be a positive integer, not 0'."""
    cls = RobustnessResult("cls", "classification", ["accuracy"], [0.0, 90.0], [], {"accuracy": [0.9, 0.8]})
    with pytest.raises(ValueError, match="metrics.*no metric"):
        plot_polar([_result(), cls], tmp_path / "p.png")
    with pytest.raises(ValueError, match="metrics"):
        plot_polar([_result()], tmp_path / "p.png", metrics=[])
    assert not (tmp_path / "p.png").exists()


class _Writer:
    def __init__(self):
        self.scalars = []

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, float(value), int(step)))


def _seg_data(n_batches: int = 2, size: int = 16):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n_batches):
        lab = (torch.rand(2, 1, size, size, generator=g) > 0.6).long()
        out.append({"image": lab.float() + 0.3 * torch.randn(lab.shape, generator=g), "label": lab})
    return out


def test_handler_on_ignite_engine_and_tensorboard(tmp_path):
    net = torch.nn.Sequential(monai_gmr.GMRConv(2, 1, 2, 3))
    net.train()
    engine = Engine(lambda e, b: None)
    engine.network = net
    writer = _Writer()
    h = RotationRobustnessHandler(data=_seg_data(), summary_writer=writer, output_dir=tmp_path, angles=(0, 45, 90),
                                  flips=("h",), metrics=("dice", "auc"))
    h.attach(engine)
    engine.run([0, 1], max_epochs=2)
    assert net.training  # mode restored
    assert len(h.history) == 2 and h.last_result is not None
    assert {"robustness_dice_mean", "robustness_dice_std", "robustness_auc_min"} <= set(engine.state.metrics)
    assert engine.state.metrics["robustness_dice_mean"] == pytest.approx(h.last_result.summary()["dice"]["mean"])
    tags = {t for t, _, _ in writer.scalars}
    assert "robustness/model/auc/flip_h" in tags
    for epoch in (1, 2):  # one curve per epoch, on its own tag, step = angle
        steps = [s for t, _, s in writer.scalars if t == f"robustness/model/dice/by_angle/step{epoch}"]
        assert steps == [0, 45, 90]
    assert sorted(s for t, _, s in writer.scalars if t == "robustness/model/dice/mean") == [1, 2]
    assert "robustness_epoch2.json" in _listing(tmp_path)


def test_handler_real_tensorboard_files(tmp_path):
    engine = Engine(lambda e, b: None)
    h = RotationRobustnessHandler(data=_seg_data(1), network=torch.nn.Conv2d(1, 2, 1), log_dir=tmp_path / "tb",
                                  event="COMPLETED", angles=(0, 30), flips=())
    h.attach(engine)
    engine.run([0], max_epochs=1)
    h.close()
    files = os.listdir(tmp_path / "tb")
    assert any(f.startswith("events.out.tfevents") for f in files)


def test_handler_close_leaves_a_given_writer_open(tmp_path):
    """close() is documented to close only a writer created from log_dir; with both summary_writer and log_dir given
    (the writer is used, log_dir ignored) it closed the caller's writer."""

    class W(_Writer):
        closed = False

        def close(self):
            self.closed = True

    w = W()
    h = RotationRobustnessHandler(data=_seg_data(1), network=torch.nn.Conv2d(1, 2, 1), summary_writer=w,
                                  log_dir=tmp_path / "tb", angles=(0,), flips=())
    engine = Engine(lambda e, b: None)
    h.attach(engine)
    engine.run([0], max_epochs=1)
    h.close()
    assert w.scalars and not w.closed


def test_evaluator_run_and_cli(tmp_path):
    net = torch.nn.Sequential(monai_gmr.GMRConv(2, 1, 2, 3))
    ckpt = tmp_path / "model.pt"
    torch.save({"network": net.state_dict()}, ckpt)
    fresh = torch.nn.Sequential(monai_gmr.GMRConv(2, 1, 2, 3))
    ev = RotationRobustnessEvaluator(fresh, _seg_data(), tmp_path / "out", device="cpu", ckpt_path=ckpt,
                                     angles=(0, 90, 45), flips=("v",), model_name="gmr")
    res = ev.run()
    ref = rotation_robustness(net, _seg_data(), angles=(0, 90, 45), flips=("v",))
    assert res.per_angle == ref.per_angle
    assert _listing(tmp_path / "out") == ["robustness.csv", "robustness.json", "robustness_polar.png"]

    cfg = {
        "imports": ["$import torch", "$import monai_gmr"],
        "device": "$torch.device('cpu')",
        "network_def": {"_target_": "monai_gmr.GMRConv", "spatial_dims": 2, "in_channels": 1, "out_channels": 2,
                        "kernel_size": 3},
        "network": "$@network_def.to(@device)",
        "validate": {"dataloader": {
            "_target_": "monai.data.DataLoader", "batch_size": 2,
            "dataset": {"_target_": "monai.data.Dataset", "data": "$[{'image': torch.rand(1, 16, 16), "
                        "'label': (torch.rand(1, 16, 16) > 0.5).long()} for _ in range(3)]"}}},
        "robustness": {"angles": [0, 90], "flips": []},
    }
    cfg_path = tmp_path / "evaluate.json"
    cfg_path.write_text(json.dumps(cfg))
    torch.save(net[0].state_dict(), tmp_path / "conv.pt")
    out = cli_main(str(cfg_path), ckpt_path=str(tmp_path / "conv.pt"), output_dir=str(tmp_path / "cli"),
                   compare=str(tmp_path / "out" / "robustness.json"), **{"angles": [0, 90, 180], "validate#dataloader#batch_size": 3})
    saved = load_result(tmp_path / "cli" / "robustness.json")
    assert saved.angles == [0.0, 90.0, 180.0] and saved.flips == [] and saved.n_images == 3
    assert saved.model_name == "conv"
    assert out["summary"]["dice"]["std"] == pytest.approx(0.0, abs=1e-6)  # GMR conv: equal at right angles
    with pytest.raises(ValueError, match="unknown option"):
        cli_main(str(cfg_path), output_dir=str(tmp_path / "x"), anglez=[0])
    with pytest.raises(FileNotFoundError, match="config_file"):
        cli_main(str(tmp_path / "missing.json"), output_dir=str(tmp_path / "x"))
    with pytest.raises(FileNotFoundError, match="ckpt_path"):
        cli_main(str(cfg_path), ckpt_path=str(tmp_path / "nope.pt"), output_dir=str(tmp_path / "x"))


def test_cli_reads_a_second_config_file_after_a_space(tmp_path):
    """``--config_file train.json evaluate.json`` (a space instead of a comma): Fire bound the second file to the
    next parameter, ``ckpt_path`` or ``output_dir``, and the run failed only after the whole evaluation, with
    ``FileExistsError`` from mkdir on the config file. Files after a space are now more config files, the options
    are keyword-only, and an output_dir that is a file is refused before anything runs."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    net = torch.nn.Sequential(monai_gmr.GMRConv(2, 1, 2, 3))
    torch.save(net[0].state_dict(), tmp_path / "conv.pt")
    base = {
        "imports": ["$import torch", "$import monai_gmr"],
        "device": "$torch.device('cpu')",
        "network_def": {"_target_": "monai_gmr.GMRConv", "spatial_dims": 2, "in_channels": 1, "out_channels": 2,
                        "kernel_size": 3},
        "validate": {"dataloader": {
            "_target_": "monai.data.DataLoader", "batch_size": 2,
            "dataset": {"_target_": "monai.data.Dataset", "data": "$[{'image': torch.rand(1, 16, 16), "
                        "'label': (torch.rand(1, 16, 16) > 0.5).long()} for _ in range(2)]"}}},
    }  # fmt: skip
    (tmp_path / "a.json").write_text(json.dumps(base))
    (tmp_path / "b.json").write_text(json.dumps({"robustness": {"angles": [0, 90], "flips": []}}))
    out = tmp_path / "report"
    r = subprocess.run([sys.executable, "-m", "monai_gmr.evaluation", "--config_file", str(tmp_path / "a.json"),
                        str(tmp_path / "b.json"), "--ckpt_path", str(tmp_path / "conv.pt"), "--output_dir", str(out),
                        "--plot", "False"], capture_output=True, text=True, timeout=300, cwd=str(tmp_path), env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert load_result(out / "robustness.json").angles == [0.0, 90.0]  # b.json's section was read
    with pytest.raises(ValueError, match="is a file"):
        cli_main(str(tmp_path / "a.json"), output_dir=str(tmp_path / "b.json"), device="cpu")
    with pytest.raises(FileNotFoundError, match="config_file"):
        cli_main(str(tmp_path / "a.json"), str(tmp_path / "missing.json"), output_dir=str(out))


def test_cli_without_ckpt_path_warns(tmp_path, caplog):
    """Without --ckpt_path the CLI evaluated the config's freshly built network without a word (the bundles' own
    'ckpt_path' id is not loaded): the report then holds an untrained network's numbers."""
    cfg = {
        "imports": ["$import torch", "$import monai_gmr"],
        "ckpt_path": "models/model.pt",
        "network": {"_target_": "monai_gmr.GMRConv", "spatial_dims": 2, "in_channels": 1, "out_channels": 2,
                    "kernel_size": 3},
        "dataloader": "$[{'image': torch.rand(1, 1, 16, 16), 'label': (torch.rand(1, 1, 16, 16) > 0.5).long()}]",
    }  # fmt: skip
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    with caplog.at_level("WARNING", logger="monai_gmr.evaluation"):
        cli_main(str(tmp_path / "c.json"), output_dir=str(tmp_path / "o"), device="cpu", angles=[0, 90], flips=[], plot=False)
    assert "no --ckpt_path" in caplog.text and "models/model.pt" in caplog.text


def _write_tiny_cli_config(path, **extra) -> None:
    """A config the evaluation CLI can run: a GMRConv and one random 16x16 image/label pair (plus ``extra`` ids)."""
    cfg = {
        "imports": ["$import torch", "$import monai_gmr"],
        "network": {"_target_": "monai_gmr.GMRConv", "spatial_dims": 2, "in_channels": 1, "out_channels": 2,
                    "kernel_size": 3},
        "dataloader": "$[{'image': torch.rand(1, 1, 16, 16), 'label': (torch.rand(1, 1, 16, 16) > 0.5).long()}]",
        **extra,
    }  # fmt: skip
    path.write_text(json.dumps(cfg))


@pytest.mark.parametrize("device, match, gpus", [("gpu", "device must be cpu, cuda or cuda:N, got 'gpu'", 0),
                                                 ("cuda", "device 'cuda': CUDA is not available here", 0),
                                                 ("cuda:1", r"device 'cuda:1': only 1 GPU\(s\) visible", 1)])
def test_cli_refuses_a_device_it_cannot_use_by_name(tmp_path, monkeypatch, device, match, gpus):
    """--device cuda without CUDA ended in torch's "AssertionError: Torch not compiled with CUDA enabled" from inside
    the evaluation; --device gpu in torch's RuntimeError listing every device type, naming no option; cuda:1 on a
    one-GPU machine in "invalid device ordinal"."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    _write_tiny_cli_config(tmp_path / "c.json")
    with pytest.raises(ValueError, match=match):
        cli_main(str(tmp_path / "c.json"), output_dir=str(tmp_path / "o"), device=device, angles=[0, 90], flips=[], plot=False)
    assert not (tmp_path / "o").exists()


def test_cli_refuses_an_output_dir_under_a_file_before_the_evaluation(tmp_path, monkeypatch):
    """output_dir inside a file (a/report with a a file) was found only after the evaluation (NotADirectoryError)."""
    from monai_gmr.evaluation import workflow

    monkeypatch.setattr(workflow.RotationRobustnessEvaluator, "run", lambda self: pytest.fail("evaluated"))
    _write_tiny_cli_config(tmp_path / "c.json")
    for out in (tmp_path / "c.json", tmp_path / "c.json" / "report"):
        with pytest.raises(ValueError, match="output_dir .*c.json"):
            cli_main(str(tmp_path / "c.json"), output_dir=str(out), device="cpu", angles=[0, 90], flips=[], plot=False)


def test_cli_robustness_section_that_is_not_a_dict(tmp_path):
    """RotationRobustnessEvaluator's docstring put the evaluator itself under the id "robustness", the CLI's
    keyword-argument section: the CLI then died in dict() with "'RotationRobustnessEvaluator' object is not
    iterable"."""
    cfg = {
        "imports": ["$import torch", "$import monai_gmr"],
        "network": {"_target_": "monai_gmr.GMRConv", "spatial_dims": 2, "in_channels": 1, "out_channels": 2,
                    "kernel_size": 3},
        "dataloader": "$[{'image': torch.rand(1, 1, 16, 16), 'label': (torch.rand(1, 1, 16, 16) > 0.5).long()}]",
        "robustness": {"_target_": "monai_gmr.evaluation.RotationRobustnessEvaluator", "network": "@network",
                       "dataloader": "@dataloader", "output_dir": str(tmp_path / "e")},
    }  # fmt: skip
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="robustness_id.*RotationRobustnessEvaluator"):
        cli_main(str(tmp_path / "c.json"), output_dir=str(tmp_path / "o"), device="cpu", plot=False)


def test_cli_passes_every_rotation_robustness_argument():
    """The CLI forwards each rotation_robustness argument (but network, data, its own --device and distributed: the
    CLI is one process)."""
    import inspect

    from monai_gmr.evaluation.__main__ import ROBUSTNESS_ARGS

    params = set(inspect.signature(rotation_robustness).parameters) - {"network", "data", "device", "distributed"}
    assert set(ROBUSTNESS_ARGS) == params and len(ROBUSTNESS_ARGS) == len(params)


@pytest.mark.timeout(30)  # a labelling loop that never finds a free name must fail, not hang
def test_results_with_one_name_get_distinct_labels(tmp_path):
    """Several results of one ``model_name`` (e.g. two runs of one config) are labelled ``name``, ``name (2)``, ...
    in the plot instead of overwriting each other; a mapping keeps its own labels."""
    from monai_gmr.evaluation.report import _as_named

    a, b, c = _result(), _result(shift=0.1), _result(shift=0.2)
    named = _as_named([a, b, c, _result("plain")])
    assert list(named) == ["gmr", "gmr (2)", "gmr (3)", "plain"]
    assert named["gmr"] is a and named["gmr (2)"] is b and named["gmr (3)"] is c
    assert list(_as_named({"x": a, "y": b})) == ["x", "y"] and list(_as_named(a)) == ["gmr"]
    assert plot_polar([a, b], tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_csv_keeps_six_significant_digits():
    r = RobustnessResult("m", "segmentation", ["dice"], [0.0], [], {"dice": [0.123456789]}, {}, 1)
    rows = list(csv.DictReader(io.StringIO(monai_gmr.evaluation.report.result_to_csv(r))))
    assert rows[0]["dice"] == "0.123457" and float(rows[0]["dice"]) == pytest.approx(0.123456789, abs=1e-6)


def test_evaluator_overlays_the_compared_results_on_its_plot(tmp_path, monkeypatch):
    """``RotationRobustnessEvaluator(compare=[json, ...])`` loads those results and overlays them on the polar plot
    (after its own result); nothing else shows that the compared files are read at all."""
    import monai_gmr.evaluation.report as report

    save_json(_result("plain", 0.1), tmp_path / "plain.json")
    seen = []
    real = report.plot_polar

    def spy(results, path, **kwargs):
        seen.append([r.model_name for r in results])
        return real(results, path, **kwargs)

    monkeypatch.setattr(report, "plot_polar", spy)
    ev = RotationRobustnessEvaluator(torch.nn.Conv2d(1, 2, 1), _seg_data(1), tmp_path / "out", device="cpu",
                                     compare=[tmp_path / "plain.json"], angles=(0, 90), flips=(),
                                     metrics=("dice", "auc"), model_name="gmr")  # fmt: skip
    ev.run()
    assert seen == [["gmr", "plain"]] and (tmp_path / "out" / "robustness_polar.png").is_file()


# ------------------------------------------------------------------------------------------- mutation audit, round 5
def _cli_with_a_fake_evaluator(tmp_path, monkeypatch, cfg=None, **kwargs) -> dict:
    """Run the CLI's ``main`` on a tiny config (plus the ids of ``cfg``) with the evaluator replaced: returns the
    keyword arguments it got (``device="cpu"`` unless given)."""
    import types

    import monai_gmr.evaluation.workflow as workflow

    seen: dict = {}

    class Fake:
        paths: dict = {}

        def __init__(self, network, dataloader, output_dir, **kw):
            seen.update(kw)

        def run(self):
            return types.SimpleNamespace(summary=dict)

    monkeypatch.setattr(workflow, "RotationRobustnessEvaluator", Fake)
    cfg = {"network": {"_target_": "torch.nn.Identity"}, "dataloader": [], **(cfg or {})}
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    kwargs.setdefault("device", "cpu")
    cli_main(str(tmp_path / "c.json"), output_dir=str(tmp_path / "o"), ckpt_path=None, **kwargs)
    return seen


def test_cli_option_forms_reach_the_evaluator(tmp_path, monkeypatch):
    """``--label_transform binarize`` is ``binarize_label``, ``--compare a.json,b.json`` two reports, and
    ``--bundle_root`` is accepted for a config that does not define it (the bundles' common override)."""
    from monai_gmr.evaluation import binarize_label

    seen = _cli_with_a_fake_evaluator(tmp_path, monkeypatch, label_transform="binarize", compare="a.json, b.json",
                                      bundle_root=str(tmp_path))  # fmt: skip
    assert seen["label_transform"] is binarize_label
    assert seen["compare"] == ["a.json", "b.json"]


def test_cli_refuses_an_inferer_id_the_config_lacks(tmp_path, monkeypatch):
    """A named ``--inferer_id`` that is not in the config is an error, not a silent fall back to SimpleInferer."""
    with pytest.raises(ValueError, match="inferer_id"):
        _cli_with_a_fake_evaluator(tmp_path, monkeypatch, inferer_id="sliding_inferer")
    assert "inferer" not in _cli_with_a_fake_evaluator(tmp_path, monkeypatch)  # no inferer id, none named: default


def test_polar_plot_has_few_radial_labels(tmp_path, monkeypatch):
    """The default zoomed radial axis got 6-8 labels a few thousandths apart, printed over one another (seen in the
    demo's plot: '0.630' on '0.635'); at most 5 are drawn now, and the axis still holds every value."""
    import matplotlib.pyplot as plt

    figs = []
    real_close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: (figs.append(fig), real_close(fig)))
    dice = [0.775 - 0.0007 * i for i in range(36)]  # a 2.5-point spread, as the demo's
    r = RobustnessResult("m", "segmentation", ["dice"], [10.0 * i for i in range(36)], [], {"dice": dice}, {}, 1)
    plot_polar(r, tmp_path / "p.png")
    (ax,) = figs[0].axes
    lo, hi = ax.get_ylim()
    ticks = [t for t in ax.get_yticks() if lo <= t <= hi]
    assert 2 <= len(ticks) <= 5, ticks
    assert lo <= min(dice) and max(dice) <= hi


def test_handler_metrics_of_an_epoch_without_values_are_nan_not_the_previous_epochs():
    """A summary statistic that is undefined (every angle NaN: no foreground in the scored region) was skipped, so
    engine.state.metrics kept the previous epoch's value and a checkpoint keyed on it read a stale number."""
    y = torch.zeros(1, 1, 8, 8, dtype=torch.long)
    y[..., 2:5, 2:5] = 1
    engine = Engine(lambda e, b: None)
    h = RotationRobustnessHandler(data=(y.float(), y), network=lambda x: torch.cat([1 - x, x], 1) * 10, angles=(0, 90),
                                  flips=(), metrics=("dice",), device="cpu")
    h(engine)
    assert engine.state.metrics["robustness_dice_mean"] == 1.0
    h.data = (torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8, dtype=torch.long))  # no foreground anywhere
    h(engine)
    assert all(math.isnan(engine.state.metrics[f"robustness_dice_{s}"]) for s in ("mean", "std", "min"))


def test_evaluator_refuses_a_checkpoint_it_cannot_load(tmp_path):
    """A ckpt_path with a network that is not an nn.Module (a wrapping function) was skipped without a word: the
    report scored weights other than the checkpoint's."""
    net = torch.nn.Sequential(monai_gmr.GMRConv(2, 1, 2, 3))
    ckpt = tmp_path / "model.pt"
    torch.save({"network": net.state_dict()}, ckpt)
    with pytest.raises(TypeError, match="ckpt_path.*nn.Module"):
        RotationRobustnessEvaluator(lambda x: net(x), _seg_data(), tmp_path / "out", device="cpu", ckpt_path=ckpt)
    assert not (tmp_path / "out").exists()


def test_cli_plot_switch_given_as_text(tmp_path, monkeypatch):
    """Fire passes ``--plot false`` as the string "false", which is true: the PNG was written anyway."""
    assert _cli_with_a_fake_evaluator(tmp_path, monkeypatch, plot="false")["plot"] is False
    with pytest.raises(ValueError, match="plot"):
        _cli_with_a_fake_evaluator(tmp_path, monkeypatch, plot="maybe")


def test_tensorboard_warns_when_rounded_angles_share_a_step(caplog):
    """Angles less than a degree apart (0 and 0.4) were written at one integer step without a word: TensorBoard
    showed one of them."""
    from monai_gmr.evaluation import write_tensorboard

    w = _Writer()
    r = RobustnessResult("m", "segmentation", ["dice"], [0.0, 0.4, 1.0], [], {"dice": [0.9, 0.8, 0.7]})
    with caplog.at_level("WARNING", logger="monai_gmr.evaluation.report"):
        write_tensorboard(r, w)
    assert "share integer steps" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="monai_gmr.evaluation.report"):
        write_tensorboard(_result(), w)
    assert "share integer steps" not in caplog.text


def test_load_result_of_a_file_that_is_not_a_report_names_it(tmp_path):
    """``--compare eval/metrics.json`` (or the CSV) failed with a bare KeyError 'model_name' / JSONDecodeError."""
    (tmp_path / "metrics.json").write_text(json.dumps({"dice": 0.8}))
    (tmp_path / "robustness.csv").write_text("model,view\n")
    with pytest.raises(ValueError, match=r"metrics\.json is not a robustness report.*model_name"):
        load_result(tmp_path / "metrics.json")
    with pytest.raises(ValueError, match=r"robustness\.csv is not JSON"):
        load_result(tmp_path / "robustness.csv")
    save_json(_result(), tmp_path / "ok.json")
    assert load_result(tmp_path / "ok.json").per_angle == _result().per_angle


def test_plot_switch_given_as_text_to_the_evaluator_handler_and_writer(tmp_path):
    """``plot="false"`` (text from a config or a command line) is a non-empty, true string: the evaluator, the
    handler and write_report wrote the polar plot anyway. Now read with as_bool; other text is refused before any
    report file is written."""
    from monai_gmr.evaluation import RotationRobustnessHandler

    net = torch.nn.Conv2d(1, 2, 1)
    ev = RotationRobustnessEvaluator(net, _seg_data(1), tmp_path / "ev", device="cpu", plot="false", angles=(0, 90),
                                     flips=(), metrics=("dice",))  # fmt: skip
    ev.run()
    assert _listing(tmp_path / "ev") == ["robustness.csv", "robustness.json"]
    h = RotationRobustnessHandler(data=_seg_data(1), network=net, output_dir=tmp_path / "h", angles=(0, 90), flips=(),
                                  metrics=("dice",), plot="no")  # fmt: skip
    engine = Engine(lambda e, b: None)
    engine.state.epoch = 1
    h(engine)
    assert not [f for f in os.listdir(tmp_path / "h") if f.endswith(".png")] and os.listdir(tmp_path / "h")
    assert "png" not in write_report(_result(), tmp_path / "w", plot="false")
    with pytest.raises(ValueError, match="plot"):
        write_report(_result(), tmp_path / "bad", plot="maybe")
    assert not (tmp_path / "bad").exists()
    with pytest.raises(ValueError, match="plot"):
        RotationRobustnessEvaluator(net, _seg_data(1), tmp_path / "ev2", device="cpu", plot="maybe")


@pytest.mark.parametrize("text", ["[0, foo]", "abc", "nan", "[0, inf]", "range(0, 360, -10)"])
def test_cli_bad_angles_are_refused_naming_angles(tmp_path, text):
    """--angles "[0, foo]" ended in a bare "could not convert string to float: 'foo'"; "abc" (a string, listed
    character by character) likewise; "nan"/"inf" ran the evaluation on NaN rotations."""
    from monai_gmr.evaluation.__main__ import cli

    cfg = {
        "imports": ["$import torch", "$import monai_gmr"],
        "network": {"_target_": "torch.nn.Conv2d", "in_channels": 1, "out_channels": 2, "kernel_size": 1},
        "dataloader": "$[{'image': torch.rand(1, 1, 8, 8), 'label': (torch.rand(1, 1, 8, 8) > 0.5).long()}]",
    }
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    argv = ["--config_file", str(tmp_path / "c.json"), "--output_dir", str(tmp_path / "o"), "--device", "cpu",
            "--plot", "false", "--angles", text]  # fmt: skip
    with pytest.raises(ValueError, match=r"^angles must be"):
        cli(argv)
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


@pytest.mark.parametrize("interval", [0, -1, 2.5, True, "x"])
def test_handler_interval_must_be_a_positive_int(interval):
    """int() read interval=2.5 as 2 and True as 1 without a word; 0 and -1 were refused."""
    from monai_gmr.evaluation import RotationRobustnessHandler

    with pytest.raises(ValueError, match="interval"):
        RotationRobustnessHandler(interval=interval)
    assert RotationRobustnessHandler(interval="3").interval == 3


def test_cli_finds_the_bundle_of_config_files_given_without_config_file(tmp_path, monkeypatch):
    """``python -m monai_gmr.evaluation train.json evaluate.json`` (positional files, as its help shows) or a call
    from Python: the bundles' ``find_bundle_root()`` looks for ``--config_file`` on the command line and, with an
    installed monai_gmr (no source checkout to fall back on), took the working directory for the bundle, so the
    dataset and outputs came from there. The CLI now gives it the first config file's bundle."""
    bundle = tmp_path / "mybundle"
    (bundle / "configs").mkdir(parents=True)
    _write_tiny_cli_config(bundle / "configs" / "c.json",
                           bundle_root="$monai_gmr.workflows.find_bundle_root('journey_no_such_bundle')",
                           output_dir="$@bundle_root + '/outputs'")  # fmt: skip
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setattr(sys, "argv", ["python -m monai_gmr.evaluation", str(bundle / "configs" / "c.json")])
    out = cli_main(str(bundle / "configs" / "c.json"), device="cpu", angles=[0, 90], flips=[], plot=False)
    assert Path(out["paths"]["json"]).parent == bundle / "outputs"
    assert not any(elsewhere.iterdir())
    # a bundle_root the config sets itself, or --bundle_root, is kept
    cli_main(str(bundle / "configs" / "c.json"), device="cpu", angles=[0], flips=[], plot=False,
             bundle_root=str(tmp_path / "given"))  # fmt: skip
    assert (tmp_path / "given" / "outputs" / "robustness.json").is_file()


def test_polar_line_is_closed_only_when_the_angles_go_round(tmp_path, monkeypatch):
    """A sweep such as [0, 45, 90, 135] (or 0..90) was joined from its last angle back to 0 degrees by a chord
    through angles never measured (seen on a CPM-15 evaluation with --robustness_angles "[0, 45, 90, 135]"); the
    full circle (0..350 or the four right angles) is still closed."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    from matplotlib.projections.polar import PolarAxes

    traces = []
    original = PolarAxes.plot

    def recording_plot(self, *args, **kwargs):
        traces.append(np.rad2deg(np.asarray(args[0], dtype=float)))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(PolarAxes, "plot", recording_plot)

    def drawn(angles):
        traces.clear()
        r = RobustnessResult(model_name="m", task="segmentation", metrics=["dice"], angles=angles, flips=[],
                             per_angle={"dice": [0.5 + 0.01 * i for i in range(len(angles))]}, per_flip={},
                             n_images=1)  # fmt: skip
        plot_polar([r], tmp_path / "p.png")
        assert len(traces) == 1
        return traces[0].round(6).tolist()

    assert drawn([0.0, 45.0, 90.0, 135.0]) == [0.0, 45.0, 90.0, 135.0]
    assert drawn([90.0, 0.0, 30.0, 60.0]) == [0.0, 30.0, 60.0, 90.0]
    assert drawn([0.0, 30.0]) == [0.0, 30.0]
    assert drawn([0.0, 90.0, 180.0, 270.0]) == [0.0, 90.0, 180.0, 270.0, 360.0]
    assert drawn([float(a) for a in range(0, 360, 10)])[-2:] == [350.0, 360.0]
    assert drawn([350.0, 0.0, 10.0]) == [350.0, 360.0, 370.0]  # a sweep across 0: the gap 10..350 is left open
    assert drawn([a for a in range(0, 360, 10) if a != 170])[-2:] == [350.0, 360.0]  # one angle left out: closed


def test_polar_metric_titles_stay_inside_the_figure_without_a_title(tmp_path, monkeypatch):
    """Without a figure title (docs/robustness.md's ``plot_polar({...}, "polar.png")``) the metric names above the
    polar axes were cut off at the top of the PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = []
    original = plt.close

    def keep(fig=None):
        figures.append(fig)

    monkeypatch.setattr(plt, "close", keep)
    for title in (None, "rotation robustness"):
        figures.clear()
        plot_polar([_result()], tmp_path / "p.png", title=title)
        fig = figures[0]
        renderer = fig.canvas.get_renderer()
        height = fig.get_window_extent(renderer).y1
        for ax in fig.axes:
            if ax.get_title():
                assert ax.title.get_window_extent(renderer).y1 <= height, (title, ax.get_title())
        original(fig)


def test_3d_reports_name_the_rotation_plane(tmp_path, monkeypatch):
    """A 3D robustness run's CSV named its views ``rot30`` whatever the plane (the TTA inferer says ``rot30_ax01``),
    the JSON recorded ``axes: null`` for the default plane (1, 2), and the polar plot labelled the lines by model name
    only: an axial and a coronal run of one model read as two runs of the same thing. Now the plane is in the view
    names (CSV, ``per_view``), in ``settings["axes"]`` (default included) and in the plot's legend; 2D is unchanged."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.projections.polar import PolarAxes

    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 2, 3, padding=1).eval()
    batch = {"image": torch.randn(1, 1, 8, 8, 6), "label": torch.randint(0, 2, (1, 1, 8, 8, 6))}
    kw = dict(angles=(0, 30), flips=(0,), spatial_dims=3, metrics=("dice",))
    axial = rotation_robustness(net, batch, axes=(0, 1), model_name="net", **kw)
    default = rotation_robustness(net, batch, model_name="net", **kw)
    assert axial.settings["axes"] == [0, 1] and default.settings["axes"] == [1, 2]
    assert list(axial.per_view()) == ["rot0_ax01", "rot30_ax01", "flip_0"]
    assert list(default.per_view()) == ["rot0_ax12", "rot30_ax12", "flip_0"]
    write_report(axial, tmp_path, compare=[default])
    views = [row["view"] for row in csv.DictReader(io.StringIO((tmp_path / "robustness.csv").read_text()))]
    assert views[:3] == ["rot0_ax01", "rot30_ax01", "flip_0"]
    assert list(load_result(tmp_path / "robustness.json").per_view())[:2] == ["rot0_ax01", "rot30_ax01"]
    labels = []
    original = PolarAxes.plot

    def recording_plot(self, *args, **kwargs):
        labels.append(kwargs.get("label"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(PolarAxes, "plot", recording_plot)
    plot_polar([axial, default], tmp_path / "p.png")
    assert labels[0].startswith("net, axes (0, 1) (std") and labels[1].startswith("net (2), axes (1, 2) (std"), labels
    labels.clear()
    plot_polar([_result()], tmp_path / "p2.png")  # 2D: no plane
    assert labels[0].startswith("gmr (std"), labels
    assert list(_result().per_view())[:2] == ["rot0", "rot90"]
    # TensorBoard: two planes of one model written to one log had the same tags (the second overwrote the first)
    from monai_gmr.evaluation import write_tensorboard

    tags = {}
    for r in (axial, default, _result()):
        w = _Writer()
        write_tensorboard(r, w)
        tags[r.plane()] = {t for t, _, _ in w.scalars}
    assert "robustness/net_ax01/dice/by_angle" in tags[(0, 1)] and "robustness/net_ax12/dice/by_angle" in tags[(1, 2)]
    assert tags[(0, 1)].isdisjoint(tags[(1, 2)]) and "robustness/gmr/dice/by_angle" in tags[None]


# ------------------------------------------------------------------------------------------------ mutation audit 4
def test_handler_fires_every_interval_epochs_and_names_a_completed_report_by_its_prefix(tmp_path):
    """``interval=2`` evaluates after epochs 2 and 4 only; the ``COMPLETED`` report is ``{prefix}.json`` (no epoch)."""
    net = torch.nn.Conv2d(1, 2, 1)
    kw = dict(data=_seg_data(1), network=net, angles=(0,), flips=(), metrics=("dice",), plot=False)
    engine = Engine(lambda e, b: None)
    h = RotationRobustnessHandler(interval=2, **kw)
    h.attach(engine)
    engine.run([0], max_epochs=5)
    assert [epoch for epoch, _ in h.history] == [2, 4]
    engine = Engine(lambda e, b: None)
    h = RotationRobustnessHandler(event="COMPLETED", output_dir=tmp_path, prefix="final", **kw)
    h.attach(engine)
    engine.run([0], max_epochs=2)
    assert [epoch for epoch, _ in h.history] == [2]
    assert _listing(tmp_path) == ["final.csv", "final.json"]


def test_handler_given_network_data_and_device_win_over_the_engine_s(monkeypatch):
    """A ``network`` / ``data`` / ``device`` given to the handler are the ones evaluated (e.g. an EMA copy on another
    loader), not the engine's ``network`` / ``data_loader`` / ``state.device``, which are only the defaults."""
    import monai_gmr.evaluation.handlers as handlers

    seen = []

    def fake(network, data, **kw):
        seen.append((network, data, kw["device"]))
        return RobustnessResult("m", "segmentation", ["dice"], [0.0], [], {"dice": [0.5]}, {}, 1)

    monkeypatch.setattr(handlers, "rotation_robustness", fake)
    engine = Engine(lambda e, b: None)
    engine.network, engine.data_loader, engine.state.device = "engine_net", "engine_data", "engine_device"
    RotationRobustnessHandler(network="mine", data="my_data", device="my_device")(engine)
    RotationRobustnessHandler()(engine)
    assert seen == [("mine", "my_data", "my_device"), ("engine_net", "engine_data", "engine_device")]


def test_handler_close_closes_the_writer_it_created_from_log_dir(tmp_path, monkeypatch):
    """close() closes the writer the handler made from ``log_dir`` (its events are flushed to disk)."""
    closed = []

    class W(_Writer):
        def close(self):
            closed.append(self)

    monkeypatch.setattr(mutils, "summary_writer", lambda log_dir: W())
    h = RotationRobustnessHandler(data=_seg_data(1), network=torch.nn.Conv2d(1, 2, 1), log_dir=tmp_path / "tb",
                                  angles=(0,), flips=(), metrics=("dice",))  # fmt: skip
    engine = Engine(lambda e, b: None)
    h.attach(engine)
    engine.run([0], max_epochs=1)
    h.close()
    assert len(closed) == 1 and closed[0] is h.summary_writer and closed[0].scalars


def test_cli_uses_the_config_s_device_and_a_robustness_section_s_inferer(tmp_path, monkeypatch):
    """Without ``--device`` the config id ``device`` is used (not CUDA because it is available); an ``inferer`` in the
    robustness section (or on the command line) wins over the config id ``inferer``."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    cfg = {"device": "cpu", "inferer": {"_target_": "monai.inferers.SimpleInferer"},
           "robustness": {"inferer": {"_target_": "monai.inferers.SlidingWindowInferer", "roi_size": [8, 8]}}}
    seen = _cli_with_a_fake_evaluator(tmp_path, monkeypatch, cfg=cfg, device=None)
    assert seen["device"] == torch.device("cpu")
    assert type(seen["inferer"]).__name__ == "SlidingWindowInferer"


def test_evaluator_device_defaults_to_cuda_when_available(tmp_path, monkeypatch):
    """``device=None`` is CUDA when available, as documented (the CPU machine hid a CPU-only default) (mutation
    audit round 5: WF1)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    ev = RotationRobustnessEvaluator(torch.nn.Conv2d(1, 2, 1), _seg_data(1), tmp_path / "out")
    assert ev.device == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert RotationRobustnessEvaluator(torch.nn.Conv2d(1, 2, 1), _seg_data(1), tmp_path / "out").device == torch.device("cpu")


def test_evaluator_closes_the_tensorboard_writer_it_opens(tmp_path, monkeypatch):
    """The writer made from ``log_dir`` is closed after the scalars are written (an open event file is lost or
    truncated when a bundle run ends) (mutation audit round 5: WF2)."""
    from unittest import mock

    writers = []

    def fake_writer(log_dir):
        writers.append(mock.MagicMock(name=f"writer({log_dir})"))
        return writers[-1]

    monkeypatch.setattr(mutils, "summary_writer", fake_writer)
    ev = RotationRobustnessEvaluator(torch.nn.Conv2d(1, 2, 1), _seg_data(1), tmp_path / "out", device="cpu",
                                     plot=False, log_dir=tmp_path / "tb", angles=(0, 90), flips=())
    ev.run()
    assert len(writers) == 1 and writers[0].add_scalar.called
    writers[0].close.assert_called_once_with()


def test_evaluator_on_a_rank_other_than_0_names_the_plot_it_leaves_to_rank_0(tmp_path, monkeypatch):
    """A rank other than 0 writes nothing but names the files rank 0 writes, the polar plot included when ``plot``
    (the gloo test runs with ``plot=False``) (mutation audit round 5: WF3)."""
    import monai_gmr.evaluation.workflow as wf

    monkeypatch.setattr(wf, "rotation_robustness", lambda *a, **k: _result())
    monkeypatch.setattr(torch.distributed, "get_rank", lambda *a, **k: 1)
    ev = RotationRobustnessEvaluator(torch.nn.Conv2d(1, 2, 1), _seg_data(1), tmp_path / "out", device="cpu",
                                     distributed=True)
    assert ev.run().model_name == "gmr"
    out = tmp_path / "out"
    assert ev.paths == {"json": out / "robustness.json", "csv": out / "robustness.csv", "png": out / "robustness_polar.png"}
    assert not out.exists()


def test_evaluator_distributed_given_as_false_text_runs_in_one_process(tmp_path):
    """``distributed="false"`` (text from a config or command line) is false: a one-process run that writes its
    report (a truthy string asked torch.distributed for a rank without a process group) (mutation audit round 5:
    WF4)."""
    ev = RotationRobustnessEvaluator(torch.nn.Conv2d(1, 2, 1), _seg_data(1), tmp_path / "out", device="cpu",
                                     plot=False, distributed="false", angles=(0,), flips=())
    assert ev.distributed is False
    ev.run()
    assert _listing(tmp_path / "out") == ["robustness.csv", "robustness.json"]


def test_cli_accepts_config_ids_whose_default_is_null(tmp_path):
    """A config id whose value is ``null`` (the WSI bundle's ``image_dir``, ``pcam_dir``, ``labels_csv``,
    ``patch_mpp``) was refused as "unknown option --image_dir: ... nor a config id", so the CLI could not evaluate a
    checkpoint on an image folder or PCam files; ids that are not in the config are still refused."""
    cfg = {
        "imports": ["$import torch"],
        "device": "$torch.device('cpu')",
        "scale": None,
        "network_def": {"_target_": "torch.nn.Conv2d", "in_channels": 1, "out_channels": 2, "kernel_size": 1},
        "validate": {"dataloader": {
            "_target_": "monai.data.DataLoader", "batch_size": 2,
            "dataset": {"_target_": "monai.data.Dataset", "data": "$[{'image': torch.rand(1, 8, 8) * (@scale or 1), "
                        "'label': torch.ones(1, 8, 8).long()} for _ in range(2)]"}}},
    }
    cfg_path = tmp_path / "evaluate.json"
    cfg_path.write_text(json.dumps(cfg))
    out = cli_main(str(cfg_path), output_dir=str(tmp_path / "cli"), angles=[0], flips=[], plot=False, scale=2.0)
    assert set(out["paths"]) >= {"json", "csv"}
    with pytest.raises(ValueError, match="unknown option --scal"):
        cli_main(str(cfg_path), output_dir=str(tmp_path / "x"), angles=[0], scal=2.0)
