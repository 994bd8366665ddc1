"""scripts/compare_equivariant.py: the --quick CPU profile end to end (real training, real rotation evaluation)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from monai_gmr.evaluation import RobustnessResult
from tests.conftest import SHARED, load_script

EXACT = ("symm", "gcnn", "gmr")  # exactly D4-equivariant (segmentation) / invariant (classification) models


def _load():
    return load_script("compare_equivariant")


@pytest.fixture(scope="module")
def ce():
    return _load()


@pytest.fixture(scope="module")
def quick_run(ce, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare_quick")
    # one intra-op thread, as the conftest one_thread fixture gives (a module fixture cannot use it): the quick
    # profile's nets are tiny and overhead-bound; 2 threads on 2 shared cores took 18-32 s instead of 10-13 s
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = ce.main(["--device", "cpu", "--quick", "--out", str(out), "--tasks", "nuclei,cpm15,wsi"])
    finally:
        torch.set_num_threads(n)
    return out, report


def _in01(v) -> bool:
    return v is not None and not math.isnan(v) and 0.0 <= v <= 1.0


def test_quick_run_writes_files(quick_run):
    out, report = quick_run
    js, md = out / "compare_quick.json", out / "compare_quick.md"
    assert js.is_file() and md.is_file()
    loaded = json.loads(js.read_text())
    assert set(loaded["tasks"]) == {"nuclei", "cpm15", "wsi"}
    text = md.read_text()
    for label in ("plain MONAI", "plain + rot/flip aug", "naive radial (Symm)", "p4m G-CNN", "GMR"):
        assert text.count(f"| {label} |") >= 2  # nuclei and wsi tables at least
    ran = [t for t, rec in loaded["tasks"].items() if not rec.get("skipped")]
    assert "nuclei" in ran and "wsi" in ran
    if (SHARED / "data" / "cpm15_nuclei_he").is_dir():
        assert "cpm15" in ran
    else:
        assert "absent" in loaded["tasks"]["cpm15"]["skipped"]
    for t in ran:
        png = out / loaded["tasks"][t]["polar_png"]
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
        if t != "wsi":
            assert (out / loaded["tasks"][t]["polar_zero_padding_png"]).stat().st_size > 5000
    assert "n/a" in text  # peak memory is CUDA only


def test_quick_run_values(ce, quick_run):
    _, report = quick_run
    for task, rec in report["tasks"].items():
        if rec.get("skipped"):
            continue
        assert list(rec["rows"]) == list(ce.MODELS)
        rows = rec["rows"]
        plain = rows["plain"]["params"]
        assert rows["plain_aug"]["params"] == plain
        for name, row in rows.items():
            assert row["params"] > 0
            assert 0.7 * plain <= row["params"] <= 1.3 * plain, (task, name, row["params"], plain)  # similar budgets
            assert row["peak_train_mem_mib"] is None
            assert row["train_images_per_s"] > 0 and row["infer_images_per_s"] > 0
            assert math.isfinite(row["final_loss"]) and row["steps"] == 3
            for m in rec["metrics"]:
                s = row["metrics"][m]
                for k in ("at_0", "mean", "min", "flip_h", "flip_v"):
                    assert _in01(s[k]), (task, name, m, k, s[k])
                assert s["min"] <= s["mean"] <= 1.0 and s["std"] >= 0.0
            res = RobustnessResult.from_dict(rec["robustness"][name])
            assert len(res.angles) == 36 and res.flips == ["h", "v"]
            assert all(_in01(v) for m in res.metrics for v in res.per_angle[m])
            if rec["kind"] == "segmentation":
                z = row["metrics_zero_padding"][rec["metrics"][0]]
                assert _in01(z["mean"]) and _in01(z["min"])
        # exactly equivariant models score the same at 0/90/180/270 degrees and under flips (exact index ops)
        for name in EXACT:
            res = RobustnessResult.from_dict(rec["robustness"][name])
            for m in res.metrics:
                v0 = res.per_angle[m][0]
                for i in (9, 18, 27):
                    assert res.per_angle[m][i] == pytest.approx(v0, abs=1e-6), (task, name, m, res.angles[i])
                for f in ("h", "v"):
                    assert res.per_flip[f][m] == pytest.approx(v0, abs=1e-6), (task, name, m, f)


def test_missing_cpm15_is_skipped(ce, tmp_path):
    report = ce.main(["--device", "cpu", "--quick", "--out", str(tmp_path), "--tasks", "cpm15",
                      "--cpm15-dir", str(tmp_path / "absent")])  # fmt: skip
    assert "absent" in report["tasks"]["cpm15"]["skipped"]
    assert "skipped" in (tmp_path / "compare_quick.md").read_text()


def test_augmentation_is_a_rotation_or_reflection(ce):
    aug = ce.RandomRotateFlip(torch.Generator().manual_seed(0))
    x = torch.rand(1, 3, 9, 9)
    c, s = math.cos(math.pi / 2), math.sin(math.pi / 2)
    rot = aug.warp["bilinear"](x, torch.tensor([[[c, -s, 0.0], [s, c, 0.0]]]))
    assert torch.allclose(rot, torch.rot90(x, 3, (-2, -1)), atol=1e-5)
    mirror = aug.warp["bilinear"](x, torch.tensor([[[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]]))
    assert torch.allclose(mirror, x.flip(-2), atol=1e-6)
    y = (torch.rand(4, 1, 46, 46) > 0.5).long()
    xr, yr = aug(torch.rand(4, 3, 46, 46), y)
    assert xr.shape == (4, 3, 46, 46) and yr.dtype == torch.long and set(yr.unique().tolist()) <= {0, 1}


def test_match_width(ce):
    def build(w: int) -> torch.nn.Module:
        return torch.nn.Conv2d(w, w, 3)

    w, p = ce.match_width(build, 9 * 20 * 20 + 20, start=4)
    assert (w, p) == (20, 9 * 400 + 20)


def test_bad_arguments(ce, tmp_path):
    with pytest.raises(ValueError, match="--tasks"):
        ce.main(["--out", str(tmp_path), "--tasks", "nuclei,bogus"])
    with pytest.raises(ValueError, match="--models"):
        ce.main(["--out", str(tmp_path), "--models", "gmr,resnet"])
    with pytest.raises(ValueError, match="--steps"):
        ce.main(["--out", str(tmp_path), "--steps", "0"])
    with pytest.raises(ValueError, match="--threads"):  # a set_num_threads RuntimeError
        ce.main(["--out", str(tmp_path), "--threads", "-1"])
    with pytest.raises(ValueError, match="--seed"):  # numpy's "Seed must be between 0 and 2**32 - 1", --out made
        ce.main(["--out", str(tmp_path / "s"), "--seed", "-1"])
    assert not (tmp_path / "s").exists()
    with pytest.raises(SystemExit):  # an unknown backend failed only at the wsi task, after the other tasks trained
        ce.main(["--out", str(tmp_path / "o"), "--wsi-backend", "foo"])
    assert not (tmp_path / "o").exists()
    with pytest.raises(ValueError, match="model must be one of"):
        ce.build_model("nuclei", "unet", ce.PROFILES["quick"])


def test_bad_device_and_out_are_refused_by_name(ce, tmp_path):
    """--device gpu was torch's RuntimeError listing every device type; --out / --data-dir naming a file a
    FileExistsError traceback."""
    (tmp_path / "afile").write_text("")
    with pytest.raises(ValueError, match="--device must be cpu or cuda, got 'gpu'"):
        ce.main(["--out", str(tmp_path / "o"), "--device", "gpu"])
    with pytest.raises(ValueError, match="--out .*afile.* is a file"):
        ce.main(["--out", str(tmp_path / "afile"), "--quick"])
    with pytest.raises(ValueError, match="--data-dir .*afile"):
        ce.main(["--out", str(tmp_path / "o"), "--quick", "--data-dir", str(tmp_path / "afile" / "d")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_a_gpu_index_beyond_the_visible_gpus_is_refused(ce, tmp_path, monkeypatch):
    """--device cuda:1 on a one-GPU machine passed the checks and failed in the first task ("invalid device ordinal")."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"--device 'cuda:1': only 1 GPU\(s\) visible"):
        ce.main(["--out", str(tmp_path / "o"), "--quick", "--device", "cuda:1"])
    assert not (tmp_path / "o").exists()


def test_augmentation_rotates_or_mirrors_image_and_label_together():
    ce = load_script("compare_equivariant")
    aug = ce.RandomRotateFlip(torch.Generator().manual_seed(0))
    img = torch.zeros(8, 1, 46, 46)
    img[..., 12:22, 8:30] = 1.0  # an off-centre bar: no symmetry of the square maps it onto itself
    xr, yr = aug(img.expand(-1, 3, -1, -1), img.long())
    assert not torch.allclose(xr[:, :1], img)  # something was rotated
    assert ((xr[:, :1] > 0.5).long() == yr).float().mean() > 0.98  # the label follows the image
    th = ce.RandomRotateFlip(torch.Generator().manual_seed(1)).theta(2000, torch.device("cpu"))
    det = th[:, 0, 0] * th[:, 1, 1] - th[:, 0, 1] * th[:, 1, 0]
    assert torch.allclose(det.abs(), torch.ones(2000), atol=1e-5)  # rotations and reflections only
    assert 0.45 < float((det < 0).float().mean()) < 0.55  # mirrored half the time


def test_a_failed_task_writes_no_polar_plot_of_the_tasks_before_it(tmp_path, monkeypatch):
    """The polar PNGs of each task were written as soon as the task finished; a later task that failed left them in
    --out beside the JSON/Markdown of an earlier run (e.g. docs/results), which no longer described them."""
    import monai_gmr.evaluation as ev

    mod = _load()
    plotted = []
    monkeypatch.setattr(ev, "plot_polar", lambda *a, **k: plotted.append(a[1]))
    done = {"kind": "segmentation", "metrics": ["dice"], "_results": {"plain": None}, "_zero_results": {"plain": None}}

    def run_task(task, *a, **k):
        if task == "wsi":
            raise RuntimeError("wsi failed")
        return dict(done)

    monkeypatch.setattr(mod, "run_task", run_task)
    with pytest.raises(RuntimeError, match="wsi failed"):
        mod.main(["--device", "cpu", "--quick", "--out", str(tmp_path), "--tasks", "nuclei,wsi"])
    assert plotted == [] and not list(tmp_path.iterdir())


def test_data_dir_keeps_each_profiles_data_apart(tmp_path, monkeypatch):
    """--data-dir was used as is by every profile, and the generated datasets in it are reused whatever made them: a
    cpu-profile run after a --quick run trained on the quick profile's tiny synthetic data while its report named
    the cpu profile's settings."""
    mod = _load()
    works = []

    def run_task(task, profile, models, device, work, *a, **k):
        works.append(work)
        raise RuntimeError("stop")

    monkeypatch.setattr(mod, "run_task", run_task)
    for extra in (["--quick"], ["--profile", "cpu"], ["--quick"]):
        with pytest.raises(RuntimeError, match="stop"):
            mod.main(["--device", "cpu", "--out", str(tmp_path / "o"), "--tasks", "nuclei", "--data-dir",
                      str(tmp_path / "d")] + extra)  # fmt: skip
    assert works[0] != works[1] and works[0] == works[2] and all(tmp_path / "d" in w.parents for w in works)


# ---- mutation audit round 4: same data for every model, the timed steps, the zero-padding pass, the angle grid ----


def test_augmentation_does_not_change_the_crop_sequence(ce):
    """plain and plain_aug see the same crops/patches: the augmentation draws from its own generator."""
    dev = torch.device("cpu")
    train = [(torch.rand(3, 96, 96), (torch.rand(1, 96, 96) > 0.5).long()) for _ in range(3)]
    a, b = ce.SegBatches(train, 16, 4, seed=0, augment=False), ce.SegBatches(train, 16, 4, seed=0, augment=True)
    xs, ys = torch.rand(10, 3, 40, 40), torch.randint(0, 2, (10,))
    c, d = ce.ClsBatches(xs, ys, 16, 4, seed=0, augment=False), ce.ClsBatches(xs, ys, 16, 4, seed=0, augment=True)
    for _ in range(3):
        a(dev), b(dev)
        assert torch.equal(c(dev)[1], d(dev)[1])
    assert torch.equal(a.gen.get_state(), b.gen.get_state()) and torch.equal(c.gen.get_state(), d.gen.get_state())


def test_train_images_per_s_leaves_out_the_warmup_steps(ce, monkeypatch):
    """Under a fake clock where the first two forwards take 100 s and the others 1 s: 6 steps, 2 untimed."""
    from types import SimpleNamespace

    clock, calls = [0.0], [0]

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3, 2)

        def forward(self, x):
            calls[0] += 1
            clock[0] += 100.0 if calls[0] <= 2 else 1.0
            return self.fc(x.mean((-2, -1)))

    monkeypatch.setattr(ce, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    batches = lambda device: (torch.rand(5, 3, 8, 8), torch.randint(0, 2, (5,)))  # noqa: E731
    tr = ce.train_model(Net(), batches, "classification", 6, 1e-3, torch.device("cpu"))
    assert tr["steps"] == 6 and tr["train_images_per_s"] == pytest.approx(5.0)  # 4 steps x 5 images / 4 s


def test_zero_padding_pass_uses_zero_filled_corners(ce, monkeypatch, tmp_path):
    import monai_gmr.evaluation as ev

    calls = []

    class Res:
        per_flip: dict = {}

        def summary(self):
            return {m: {"at_0": 0.5, "mean": 0.5, "std": 0.0, "min": 0.5, "worst_angle": 0.0} for m in ce.SEG_METRICS}

        def to_dict(self):
            return {}

    def fake_rr(net, batches, **kw):
        calls.append((tuple(kw["flips"]), kw["padding_mode"]))
        return Res()

    monkeypatch.setattr(ev, "rotation_robustness", fake_rr)
    data = {"train": [(torch.rand(3, 96, 96), torch.randint(0, 2, (1, 96, 96)))],
            "eval_images": torch.rand(2, 3, 32, 32), "eval_labels": torch.randint(0, 2, (2, 1, 32, 32))}  # fmt: skip
    monkeypatch.setattr(ce, "seg_data", lambda *a, **k: data)
    monkeypatch.setattr(ce, "train_model", lambda *a, **k: {"train_seconds": 0.0, "train_images_per_s": 1.0,
                                                             "first_loss": 1.0, "final_loss": 1.0})  # fmt: skip
    monkeypatch.setattr(ce, "inference_speed", lambda *a, **k: 1.0)
    rec = ce.run_task("nuclei", ce.PROFILES["quick"], ["plain"], torch.device("cpu"), tmp_path, tmp_path, 0, None, "tifffile")
    assert calls == [(tuple(ce.FLIPS), "reflection"), ((), "zeros")]
    assert "metrics_zero_padding" in rec["rows"]["plain"]


def test_angle_grid_starts_at_zero_in_steps_of_ten(ce):
    """``at_0`` is the first angle's value and the report states 36 angles 0, 10, ..., 350."""
    assert ce.ANGLES == tuple(10 * i for i in range(36))


def test_inference_speed_counts_every_timed_call(ce, monkeypatch):
    """Images/s = repeats x batch / time of the repeats (the warm-up call untimed); fake clock, 1 s per forward."""
    from types import SimpleNamespace

    clock = [0.0]

    class Net(torch.nn.Module):
        def forward(self, x):
            clock[0] += 1.0
            return x

    monkeypatch.setattr(ce, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    assert ce.inference_speed(Net(), torch.rand(4, 3, 8, 8), 3, torch.device("cpu")) == pytest.approx(4.0)


def test_prepared_dataset_with_an_empty_test_split_is_used(ce, tmp_path):
    """``--cpm15-dir`` of a dataset prepared with ``--test_frac 0`` (``"test": []``): MONAI's
    ``load_decathlon_datalist`` fails on an empty test list with a bare ``IndexError``; the validation tiles are
    the held-out tiles then."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    (tmp_path / "d" / "images").mkdir(parents=True)
    (tmp_path / "d" / "labels").mkdir()
    items = []
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "d" / "images" / f"{i}.png")
        lab = np.zeros((64, 64), np.uint16)
        lab[20:40, 20:40] = 1
        Image.fromarray(lab).save(tmp_path / "d" / "labels" / f"{i}.png")
        items.append({"image": f"images/{i}.png", "label": f"labels/{i}.png"})
    dl = {"training": items[:2], "validation": items[2:], "test": []}
    (tmp_path / "d" / "datalist.json").write_text(json.dumps(dl))
    data = ce.seg_data("cpm15", ce.PROFILES["quick"], tmp_path / "work", tmp_path / "d")
    assert isinstance(data, dict), data
