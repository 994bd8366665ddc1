"""scripts/aggregate_nuclei.py: benchmark_nuclei.py results summarised across training seeds."""

from __future__ import annotations

import json
import math

import pytest

from tests.conftest import ROOT, load_script

RESULTS = ROOT / "docs" / "results"


def _load():
    return load_script("aggregate_nuclei")


def _settings(seed: int, models: list[str], extra: dict | None = None, **kw) -> dict:
    s = {"epochs": 160, "max_steps": 1600, "val_interval": 40, "crop": 128, "crops_per_image": 4, "batch_size": 2,
         "lr": 0.001, "roi": 256, "angle_step": 10, "split_seed": 0, "seed": seed, "models": models,
         "extra": extra or {}}  # fmt: skip
    s.update(kw)
    return s


def _row(model: str, d0: float, dm: float, dmin: float) -> dict:
    return {"model": model, "dice_0": d0, "dice_mean": dm, "dice_std": 0.001, "dice_min": dmin, "iou_mean": dm - 0.1,
            "auc_mean": 0.98, "best_val_dice": 0.9}  # fmt: skip


def _write(path, doc) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return str(path)


K5 = {"network_def#kernel_sizes": [5, 5, 5, 5]}


def _three_seeds(tmp_path, basicunet_first: bool = False) -> tuple[str, str, str, str]:
    """Inputs of seeds 0 (two plain --out folders), 1 (merged, run name -> settings) and 2 (merged, settings +
    settings_<model>); ``basicunet_first`` lists seed 2's rows in the other order."""
    # seed 0: a --set override reaches every model of its run, so it is part of the label (gmrunet here), and
    # BasicUNet ran without one
    plain = _write(tmp_path / "s0" / "benchmark.json", {
        "rows": [_row("gmrunet", 0.87, 0.86, 0.85)], "settings": _settings(0, ["gmrunet"], K5)})
    plain_b = _write(tmp_path / "b0" / "benchmark.json", {
        "rows": [_row("basicunet", 0.88, 0.87, 0.84)], "settings": _settings(0, ["basicunet", "basicunet_rotaug"])})
    # seed 1: a merged file with a mapping of run name -> settings (the label already carries the override)
    merged_map = _write(tmp_path / "m1.json", {
        "rows": [_row("gmrunet (kernel_sizes=[5,5,5,5])", 0.86, 0.85, 0.84), _row("basicunet", 0.88, 0.86, 0.845)],
        "settings": {"gmrunet_k5555": _settings(1, ["gmrunet"], K5), "basicunet": _settings(1, ["basicunet"])}})
    # seed 2: a merged file with settings + settings_<model>
    rows2 = [_row("gmrunet (kernel_sizes=[5,5,5,5])", 0.865, 0.855, 0.845), _row("basicunet", 0.87, 0.85, 0.83)]
    merged_flat = _write(tmp_path / "m2.json", {
        "rows": rows2[::-1] if basicunet_first else rows2,
        "settings": _settings(2, ["gmrunet"], K5), "settings_basicunet": _settings(2, ["basicunet"])})
    return plain, plain_b, merged_map, merged_flat


def test_plain_and_merged_layouts_group_by_model_and_pair_by_seed(tmp_path):
    ag = _load()
    plain, plain_b, merged_map, merged_flat = _three_seeds(tmp_path)
    out = tmp_path / "agg"
    summary = ag.main([str(tmp_path / "s0"), str(tmp_path / "b0"), merged_map, merged_flat, "--out", str(out)])

    g, b = "gmrunet (kernel_sizes=[5,5,5,5])", "basicunet"
    assert list(summary["models"]) == [g, b] and summary["reference"] == g
    e = summary["models"][g]
    assert e["seeds"] == [0, 1, 2] and e["sources"] == sorted([plain, merged_map, merged_flat])
    assert e["dice_mean"]["values"] == [0.86, 0.85, 0.855]
    assert e["dice_mean"]["mean"] == pytest.approx(0.855) and e["dice_mean"]["min"] == 0.85 and e["dice_mean"]["max"] == 0.86
    assert e["dice_mean"]["std"] == pytest.approx(0.005)  # sample std of 0.86, 0.85, 0.855
    assert "aji_mean" not in e  # absent from the rows: left out, not zero
    p = summary["paired"][b]
    assert p["dice_mean"]["differences"] == pytest.approx([0.01, 0.01, -0.005])
    assert p["dice_mean"]["mean"] == pytest.approx(0.005) and p["dice_mean"]["positive"] == 2
    assert p["dice_min"]["differences"] == pytest.approx([-0.01, 0.005, -0.015]) and p["dice_min"]["positive"] == 1
    assert json.loads((out / "seeds.json").read_text())["paired"][b]["dice_0"]["positive"] == 3
    md = (out / "seeds.md").read_text()
    assert "| basicunet | 0, 1, 2 | 0.8767 [0.8700, 0.8800]" in md and "+1.00 / +1.00 / -0.50; +0.50; 2 of 3" in md
    assert "aji_mean" not in md

    assert summary["models"][b]["sources"] == sorted([plain_b, merged_map, merged_flat])

    ref = ag.main([plain, plain_b, merged_map, "--out", str(tmp_path / "agg2"), "--reference", b])
    assert ref["paired"][g]["dice_mean"]["differences"] == pytest.approx([-0.01, -0.01])
    assert ref["models"][g]["dice_mean"]["std"] == pytest.approx(math.sqrt(0.00005))


def test_bad_inputs_name_the_file_and_write_nothing(tmp_path):
    ag = _load()
    s0 = _write(tmp_path / "s0.json", {"rows": [_row("basicunet", 0.8, 0.8, 0.8)], "settings": _settings(0, ["basicunet"])})
    out = tmp_path / "agg"

    def refused(inputs, match, *extra):
        with pytest.raises(SystemExit, match=match):
            ag.main([*inputs, "--out", str(out), *extra])
        assert not out.exists()

    other_budget = _write(tmp_path / "crop64.json", {"rows": [_row("basicunet", 0.8, 0.8, 0.8)],
                                                     "settings": _settings(1, ["basicunet"], crop=64)})  # fmt: skip
    refused([s0, other_budget], r"crop64\.json.*crop=64.*crop=128")
    refused([s0, s0], r"basicunet seed 0 appears twice")
    refused([s0, str(tmp_path / "nowhere")], r"nowhere.*no benchmark.json")
    (tmp_path / "broken.json").write_text("{not json")
    refused([s0, str(tmp_path / "broken.json")], r"broken\.json.*not readable JSON")
    refused([_write(tmp_path / "norows.json", {"settings": {}})], r"norows\.json.*no 'rows'")
    orphan = _write(tmp_path / "orphan.json", {"rows": [_row("gmrunet", 0.8, 0.8, 0.8)], "settings": _settings(0, ["basicunet"])})
    refused([orphan], r"orphan\.json.*0 run settings naming model 'gmrunet'")
    refused([s0], r"--reference 'unet' is not among", "--reference", "unet")


def test_an_out_that_is_a_file_is_refused(tmp_path, capsys):
    """--out naming a file read every input, then stopped with a FileExistsError traceback."""
    s0 = _write(tmp_path / "s0.json", {"rows": [_row("basicunet", 0.8, 0.8, 0.8)], "settings": _settings(0, ["basicunet"])})
    (tmp_path / "afile").write_text("")
    for out in (tmp_path / "afile", tmp_path / "afile" / "sub"):
        with pytest.raises(SystemExit):
            _load().main([s0, "--out", str(out)])
        assert "--out" in capsys.readouterr().err
    assert (tmp_path / "afile").read_text() == ""


def test_the_committed_1600_iteration_results_aggregate():
    """The two merged docs/results files (seed 0 and seed 1) parse into three models with both seeds each."""
    ag = _load()
    files = [RESULTS / "nuclei_cpm15_cpu_1600it.json", RESULTS / "nuclei_cpm15_cpu_1600it_seed1.json"]
    rows = [r for f in files for r in ag.load_rows(f)]
    summary = ag.aggregate(rows)
    assert list(summary["models"]) == ["gmrunet (kernel_sizes=[5,5,5,5])", "basicunet", "basicunet_rotaug"]
    assert all(e["seeds"] == [0, 1] for e in summary["models"].values())
    assert summary["budget"]["max_steps"] == 1600 and summary["budget"]["split_seed"] == 0
    for label, p in summary["paired"].items():  # paired mean difference = difference of the per-model means
        m = summary["models"]
        assert p["dice_mean"]["mean"] == pytest.approx(m[label]["dice_mean"]["mean"] - m[summary["reference"]]["dice_mean"]["mean"])


def test_pairs_by_seed_not_by_input_order(tmp_path):
    ag = _load()
    plain, plain_b, merged_map, merged_flat = _three_seeds(tmp_path, basicunet_first=True)
    # inputs in an order where the two models meet their seeds in different orders (g: 0, 2, 1; b: 2, 1, 0)
    s = ag.main([plain, merged_flat, merged_map, plain_b, "--out", str(tmp_path / "agg")])
    p = s["paired"]["basicunet"]["dice_mean"]
    assert s["reference"] == "gmrunet (kernel_sizes=[5,5,5,5])"
    assert p["seeds"] == [0, 1, 2] and p["differences"] == pytest.approx([0.01, 0.01, -0.005])


def test_per_model_values_are_in_seed_order_whatever_the_input_order(tmp_path):
    """``seeds`` and every metric's ``values`` follow the sorted seeds, as documented, not the order of the inputs."""
    ag = _load()
    files = [_write(tmp_path / f"s{seed}.json", {"rows": [_row("basicunet", d, d, d)], "settings": _settings(seed, ["basicunet"])})
             for seed, d in ((2, 0.82), (0, 0.80), (1, 0.81))]  # fmt: skip
    e = ag.main([*files, "--out", str(tmp_path / "agg")])["models"]["basicunet"]
    assert e["seeds"] == [0, 1, 2] and e["dice_mean"]["values"] == [0.80, 0.81, 0.82]
    assert "| basicunet | 0, 1, 2 |" in (tmp_path / "agg" / "seeds.md").read_text()


def test_paired_positive_counts_seeds_strictly_above_the_reference(tmp_path):
    """'seeds > 0' in the paired table: a seed where the model ties with the reference is not a gain."""
    ag = _load()
    files = [_write(tmp_path / f"{m}{seed}.json", {"rows": [_row(m, 0.8, d, 0.7)], "settings": _settings(seed, [m])})
             for seed, (dg, db) in enumerate(((0.80, 0.80), (0.81, 0.80), (0.79, 0.80)))
             for m, d in (("gmrunet", db), ("basicunet", dg))]  # fmt: skip
    p = ag.main([*files, "--out", str(tmp_path / "agg")])["paired"]["basicunet"]["dice_mean"]
    assert p["differences"] == pytest.approx([0.0, 0.01, -0.01]) and p["positive"] == 1
