"""scripts/benchmark_nuclei.py: a tiny CPU run on a synthetic prepared dataset (real bundle train + evaluate)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import ROOT, load_script


def _load():
    return load_script("benchmark_nuclei")


def test_tiny_run_then_reevaluate_with_instance_metrics(tmp_path, monkeypatch):
    from monai_gmr.data import make_synthetic_nuclei
    from monai_gmr.nets import GMRUNet

    raw = tmp_path / "raw"  # an image + instance-mask folder pair, prepared by the script like real data
    make_synthetic_nuclei(raw, n_images=5, size=64, seed=0)
    bn = _load()
    out = tmp_path / "bench"
    # relative paths, as a user types them: the subprocesses run elsewhere, so the script must resolve them
    monkeypatch.chdir(tmp_path)
    # the bundle runs inherit the environment: 1 thread for the tiny network (2 threads on 2 shared cores roughly
    # double a run's time; see tests/bundles/helpers.bundle_env)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    args = ["--data", "raw", "--out", "bench", "--models", "gmrunet", "--epochs", "1", "--max-steps", "1",
            "--crop", "32", "--crops-per-image", "1", "--batch-size", "1", "--roi", "64", "--angle-step", "90",
            "--num-workers", "0", "--device", "cpu", "--set", "network_def#kernel_sizes=[3, 3, 5, 3]"]  # fmt: skip
    report = bn.main(args)
    row = report["rows"][0]
    # the --set override reached the trained network (the default kernel sizes give another count)
    expected = sum(p.numel() for p in GMRUNet(2, 3, 2, kernel_sizes=(3, 3, 5, 3)).parameters())
    assert expected != sum(p.numel() for p in GMRUNet(2, 3, 2).parameters())
    assert row["model"] == "gmrunet" and row["params"] == expected and row["iterations"] == 1
    assert report["settings"]["extra"] == {"network_def#kernel_sizes": [3, 3, 5, 3]}
    assert "aji_0" not in row
    # GMRUNet on 64x64 tiles: right angles and flips give the 0-degree Dice exactly
    assert row["dice_std"] == pytest.approx(0.0, abs=1e-6) and row["dice_flip_h"] == pytest.approx(row["dice_0"], abs=1e-6)
    assert (out / "benchmark.md").is_file() and json.loads((out / "benchmark.json").read_text())["rows"]
    dl = json.loads((out / "prepared" / "datalist.json").read_text())
    assert all("instance" in item for item in dl["test"])  # the prepared layout (an instance key besides the label)
    mtime = (out / "gmrunet" / "models" / "model.pt").stat().st_mtime_ns

    report = bn.main([*args, "--skip-trained", "--instance-metrics"])
    row = report["rows"][0]
    assert (out / "gmrunet" / "models" / "model.pt").stat().st_mtime_ns == mtime  # not retrained
    for m in ("aji", "pq"):
        assert 0.0 <= row[f"{m}_0"] <= 1.0 and row[f"{m}_std"] == pytest.approx(0.0, abs=1e-6)
    assert "aji_mean" in (out / "benchmark.md").read_text()
    assert "reused_without_training_record" not in report["settings"]
    # a reused model trained with another seed or budget is refused (it would be reported under this run's settings)
    for change in (["--seed", "1"], ["--epochs", "1", "--max-steps", "2"]):
        with pytest.raises(SystemExit, match="trained with other settings"):
            bn.main([*args, "--skip-trained", *change])
    assert (out / "gmrunet" / "models" / "model.pt").stat().st_mtime_ns == mtime
    # a model trained before training records existed cannot be checked (reused, and flagged in the report)
    record = json.loads((out / "gmrunet" / "benchmark_train.json").read_text())
    assert record["seed"] == 0 and "output_dir" not in record
    assert bn.check_training_record(out / "gmrunet", record) is True
    (out / "gmrunet" / "benchmark_train.json").unlink()
    assert bn.check_training_record(out / "gmrunet", record) is False


def test_out_inside_the_repository_is_refused():
    with pytest.raises(SystemExit, match="inside the repository"):
        _load().main(["--prepared", "x", "--out", str(ROOT / "bench_out")])


def test_missing_data_or_unprepared_dataset_is_refused_before_anything_runs(tmp_path):
    bn = _load()
    with pytest.raises(SystemExit, match=r"--data .*no_such is not a folder"):
        bn.main(["--data", str(tmp_path / "no_such"), "--out", str(tmp_path / "o1")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match=r"--prepared .*empty has no datalist.json"):
        bn.main(["--prepared", str(tmp_path / "empty"), "--out", str(tmp_path / "o2")])
    assert not (tmp_path / "o1" / "prepared").exists() and not any((tmp_path / "o2").iterdir())


def test_default_models_and_the_opt_in_wide_gmrunet():
    bn = _load()
    assert bn._parse(["--out", "x"]).models == ["gmrunet", "basicunet", "basicunet_rotaug"]
    wide, base = bn.MODELS["gmrunet_wide"]["network_def"], bn.MODELS["gmrunet"]["network_def"]
    assert wide["features"] == [2 * f for f in base["features"]] and wide["kernel_sizes"] == base["kernel_sizes"]
    assert bn._parse(["--out", "x", "--models", "gmrunet_wide"]).models == ["gmrunet_wide"]


def test_set_overrides_parse_as_json_or_string_and_bad_items_are_refused(capsys):
    bn = _load()
    assert bn.parse_overrides(["network_def#norm=batch", "a#b=[1, 2]", "lr= 0.5", "s="]) == {
        "network_def#norm": "batch", "a#b": [1, 2], "lr": 0.5, "s": ""}
    for bad in ("no_equals_sign", "=3"):
        with pytest.raises(SystemExit):
            bn._parse(["--out", "x", "--set", bad])
        assert "--set expects KEY=VALUE" in capsys.readouterr().err
    cmd = bn._bundle_cmd(["train.json"], {"network_def": {"x": 1}, "network_def#norm": "batch"})
    assert cmd[-4:] == ["--network_def", "{'x': 1}", "--network_def#norm", "batch"]  # applied after the model's dict


@pytest.mark.parametrize(
    "option", ["--epochs", "--crops-per-image", "--batch-size", "--angle-step", "--val-interval", "--crop", "--roi", "--timeout"]
)  # --val-interval/--crop/--roi/--timeout 0 failed inside the first bundle step (or timed out at once)
def test_counts_below_one_are_refused_naming_the_option(tmp_path, capsys, option):
    bn = _load()
    for bad in ("0", "-2", "x"):
        with pytest.raises(SystemExit):
            bn._parse(["--out", "x", option, bad])
        assert f"argument {option}:" in capsys.readouterr().err
    assert getattr(bn._parse(["--out", "x", option, "1"]), option[2:].replace("-", "_")) == 1
    # main refuses before anything runs (--epochs 0 --max-steps 10 was a ZeroDivisionError)
    with pytest.raises(SystemExit):
        bn.main(["--out", str(tmp_path / "out"), "--prepared", str(tmp_path / "none"), option, "0", "--max-steps", "10"])
    assert f"argument {option}: must be >= 1, got 0" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_max_steps_must_be_a_multiple_of_epochs(capsys):
    bn = _load()
    assert bn._parse(["--out", "x", "--epochs", "4", "--max-steps", "12"]).max_steps == 12
    for bad in (["--epochs", "3", "--max-steps", "10"], ["--epochs", "10", "--max-steps", "5"], ["--max-steps", "0"]):
        with pytest.raises(SystemExit):
            bn._parse(["--out", "x", *bad])
        assert "argument --max-steps:" in capsys.readouterr().err


def test_negative_workers_and_cuda_without_cuda_are_refused_before_anything_runs(tmp_path, capsys, monkeypatch):
    """--num-workers -1 failed in the bundle's DataLoader; --device cuda on a machine without CUDA started training."""
    import torch

    bn = _load()
    with pytest.raises(SystemExit):
        bn._parse(["--out", "x", "--num-workers", "-1"])
    assert "argument --num-workers: must be >= 0" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="--device cuda"):
        bn.main(["--out", str(tmp_path / "out"), "--device", "cuda", "--prepared", str(tmp_path / "none")])
    assert not (tmp_path / "out").exists()


def test_a_failed_retraining_does_not_keep_the_earlier_training_record(tmp_path, monkeypatch):
    """Retraining into an --out that holds a finished model kept that model's benchmark_train.json while the bundle
    trained anew; when the new training stopped (after writing its first models/model.pt), a later --skip-trained
    run with the earlier settings accepted the half-trained model as trained with them."""
    bn = _load()
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    (prepared / "datalist.json").write_text("{}")
    run_dir = tmp_path / "out" / "gmrunet"
    (run_dir / "models").mkdir(parents=True)
    (run_dir / "models" / "model.pt").write_bytes(b"")
    (run_dir / "train_summary.json").write_text("{}")
    (run_dir / bn.TRAINING_RECORD).write_text(json.dumps({"seed": 0}))

    def fail(cmd, log, env, timeout):
        raise RuntimeError("training stopped")

    monkeypatch.setattr(bn, "_run", fail)
    with pytest.raises(RuntimeError, match="training stopped"):
        bn.main(["--prepared", str(prepared), "--out", str(tmp_path / "out"), "--models", "gmrunet", "--seed", "1",
                 "--device", "cpu", "--num-workers", "0"])  # fmt: skip
    assert not (run_dir / bn.TRAINING_RECORD).exists()


@pytest.mark.parametrize("change", [["--split-seed", "1"], ["--data", "other"]])
def test_a_dataset_prepared_with_other_settings_in_out_is_refused(tmp_path, monkeypatch, change):
    """<out>/prepared was reused whenever it held a datalist: a rerun into the same --out with another --split-seed
    (or --data) trained and scored on the earlier split while the report gave the new settings."""
    bn = _load()
    for name in ("raw", "other"):
        (tmp_path / name).mkdir()
    prepared = tmp_path / "out" / "prepared"
    prepared.mkdir(parents=True)
    (prepared / "datalist.json").write_text(json.dumps({"training": [], "preparation": {"input": str(tmp_path / "raw"),
                                                                                        "seed": 0}}))  # fmt: skip

    def ran(*a, **k):
        raise RuntimeError("ran on the earlier preparation")

    monkeypatch.setattr(bn, "_run", ran)
    monkeypatch.chdir(tmp_path)
    args = ["--data", "raw", "--out", "out", "--models", "gmrunet", "--device", "cpu", "--num-workers", "0"]
    with pytest.raises(SystemExit, match=change[0]):
        bn.main(args + change)
    with pytest.raises(RuntimeError, match="earlier preparation"):  # the same settings reuse it
        bn.main(args)


def _bundle_commands(tmp_path, monkeypatch, n: int, args: list[str]) -> list[list[str]]:
    """The first ``n`` bundle commands ``main(["--prepared", <empty split>, "--out", ...] + args)`` runs (the run
    stops at command ``n``; the earlier ones return at once)."""
    bn = _load()
    (tmp_path / "prep").mkdir()
    (tmp_path / "prep" / "datalist.json").write_text(json.dumps({"training": [], "validation": [], "test": []}))
    cmds = []

    def fake_run(cmd, log, env, timeout):
        cmds.append(cmd)
        log.parent.mkdir(parents=True, exist_ok=True)
        if len(cmds) == n:
            raise RuntimeError("stop")
        return 0.0

    monkeypatch.setattr(bn, "_run", fake_run)
    with pytest.raises(RuntimeError, match="stop"):
        bn.main(["--prepared", str(tmp_path / "prep"), "--out", str(tmp_path / "o"), *args])
    return cmds


def test_training_command_gets_the_seed_and_epoch_length_of_the_budget(tmp_path, monkeypatch):
    """--max-steps is the total: every model's bundle run gets epoch_length = max_steps / epochs and --seed."""
    cmds = _bundle_commands(tmp_path, monkeypatch, 1, ["--models", "basicunet", "--epochs", "4", "--max-steps", "12",
                                                          "--seed", "3", "--device", "cpu"])  # fmt: skip
    (cmd,) = cmds
    opts = dict(zip(cmd[::-1][1::2], cmd[::-1][::2]))  # "--key": value, the last occurrence wins as in the bundle
    assert opts["--epoch_length"] == "3" and opts["--epochs"] == "4" and opts["--seed"] == "3"


def test_row_reads_each_metric_from_its_own_summary_entry(tmp_path):
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    summary = {m: {"at_0": base, "mean": base - 0.01, "std": 0.002, "min": base - 0.05, "worst_angle": 40}
               for m, base in (("dice", 0.8), ("iou", 0.7), ("auc", 0.95))}  # fmt: skip
    (run / "eval" / "metrics.json").write_text(json.dumps({"robustness": {"summary": summary, "per_flip": {
        "h": {"dice": 0.79}, "v": {"dice": 0.78}}}}))  # fmt: skip
    (run / "train_summary.json").write_text(json.dumps({"best_metric": 0.81, "wall_time_s": 12.0, "iterations_completed": 8}))
    row = _load()._row("basicunet", run)
    for m, base in (("dice", 0.8), ("iou", 0.7), ("auc", 0.95)):
        assert (row[f"{m}_0"], row[f"{m}_mean"], row[f"{m}_std"], row[f"{m}_min"]) == pytest.approx(
            (base, base - 0.01, 0.002, base - 0.05)), m
    assert row["dice_worst_angle"] == 40 and (row["dice_flip_h"], row["dice_flip_v"]) == (0.79, 0.78)
    assert (row["best_val_dice"], row["train_s"], row["iterations"], row["params"]) == (0.81, 12.0, 8, None)


# ------------------------------------------------------------------------------------------------ mutation audit 4
def test_bundle_runs_get_the_validation_interval_angles_and_both_flips(tmp_path, monkeypatch):
    """The training run validates at least once (``val_interval`` capped at ``--epochs``); the evaluation scores the
    angles ``0, step, ... < 360`` and both flips (h and v), as the report's header says."""
    cmds = _bundle_commands(tmp_path, monkeypatch, 2, ["--models", "gmrunet", "--epochs", "4", "--val-interval", "10",
                                                       "--angle-step", "90", "--device", "cpu"])  # fmt: skip
    train, evaluate = (dict(zip(c[::-1][1::2], c[::-1][::2])) for c in cmds)
    assert train["--val_interval"] == "4" and train["--epochs"] == "4"
    assert evaluate["--robustness_angles"] == "[0, 90, 180, 270]" and evaluate["--robustness_flips"] == "['h', 'v']"


def test_param_count_leaves_out_running_statistics(tmp_path):
    """The params column counts learned parameters: BasicUNet's batch-norm running statistics are buffers."""
    import torch

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    torch.save(net.state_dict(), tmp_path / "a.pt")
    torch.save({"model": net.state_dict()}, tmp_path / "b.pt")
    want = sum(p.numel() for p in net.parameters())  # 2 * 9 + 2 + 2 + 2
    bn = _load()
    assert bn._param_count(tmp_path / "a.pt") == bn._param_count(tmp_path / "b.pt") == want == 24
    assert bn._param_count(tmp_path / "none.pt") is None


def test_training_record_leaves_out_where_and_how_the_data_are_loaded(tmp_path):
    """A rerun with another ``--num-workers`` (or output folder) may reuse a trained model: only the settings that
    change what is trained are recorded and compared."""
    bn = _load()
    record = bn.training_record({"output_dir": "a", "num_workers": 4, "seed": 1, "epochs": 2})
    assert record == {"seed": 1, "epochs": 2}
    (tmp_path / bn.TRAINING_RECORD).write_text(json.dumps(record))
    assert bn.check_training_record(tmp_path, bn.training_record({"output_dir": "b", "num_workers": 0, "seed": 1,
                                                                  "epochs": 2}))  # fmt: skip
