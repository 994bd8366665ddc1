"""Tests of the gmr_wsi_patch_classification MONAI bundle: configs, metadata, end-to-end runs (train -> evaluate ->
slide inference), resume after a kill, multi-process training, alternative data sources (PCam HDF5, image
folders, real patches/slides from ../shared when present) and errors that name the slide.

End-to-end runs use subprocesses exactly like a user (``python -m monai.bundle run ...``) on tiny synthetic slides
(1024 x 1024, 3 levels, 32-pixel patches, a gmr_resnet18 with widths 4-16, a few iterations) so the file stays
fast on 2 CPU cores; the other tests run the bundle configs in-process through ``monai.bundle.ConfigWorkflow``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.bundles.helpers import (
    BAD_TRAIN_SETTINGS,
    EXACT_VIEWS,
    bundle_env,
    check_best_saver_keeps_the_latest_tie,
    check_kill_and_resume,
    check_logits_metadata,
    check_monai_properties,
    check_rotated_validation,
    check_key_metric_follows_the_configured_key_metric,
    check_key_metric_setting_refused,
    check_key_metric_without_additional_metrics,
    init_id,
    check_rotated_validation_settings_refused,
    check_sampler_refuses_a_short_split,
    check_same_robustness_reports,
    check_multi_gpu_seeds_per_rank,
    check_switches_read_as_bool,
    check_settings_refused_by_name,
    check_training_settings_refused_before_the_data,
    check_validation_shorter_than_processes,
    config_parser,
    no_outputs,
    run_bundle,
    run_torchrun_bundle,
    workflow_error,
)
from tests.conftest import ROOT, shared_path

BUNDLE = ROOT / "bundles" / "gmr_wsi_patch_classification"
CONFIGS = BUNDLE / "configs"
TRAIN = str(CONFIGS / "train.json")
EVALUATE = str(CONFIGS / "evaluate.json")
INFERENCE = str(CONFIGS / "inference.json")
MULTI_GPU = str(CONFIGS / "multi_gpu_train.json")
MULTI_GPU_INFERENCE = str(CONFIGS / "multi_gpu_inference.json")
MULTI_GPU_EVAL = str(CONFIGS / "multi_gpu_evaluate.json")
METADATA = str(CONFIGS / "metadata.json")

PATCH = 32
TINY_NET = {
    "_target_": "monai_gmr.nets.gmr_resnet18", "spatial_dims": 2, "in_channels": 3, "num_classes": "@num_classes",
    "block_inplanes": [4, 8, 8, 16], "kernel_sizes": [5, 5, 3, 3],
}  # fmt: skip
SYNTH = {"n_slides": 3, "size": 1024, "seed": 0, "patches_per_slide": 16, "patch_size": PATCH}


def _common(data: Path, out: Path) -> list[str]:
    return [
        "--dataset_dir", str(data), "--output_dir", str(out), "--synthetic", repr(SYNTH), "--patch_size", str(PATCH),
        "--num_workers", "0", "--network_def", repr(TINY_NET),
    ]  # fmt: skip


TRAIN_ARGS = ["--epochs", "2", "--epoch_length", "2", "--batch_size", "4", "--val_batch_size", "16", "--log_interval", "1"]


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> dict:
    """A tiny synthetic slide dataset (read-only for the tests that use it) plus a corrupt slide."""
    from monai_gmr.data import make_synthetic_wsi

    root = tmp_path_factory.mktemp("wsi_bundle")
    info = make_synthetic_wsi(root / "data", **SYNTH)
    (root / "corrupt.svs").write_bytes(b"II*\x00 not a slide at all" * 8)
    info["corrupt"] = str(root / "corrupt.svs")
    return info


# ---------------------------------------------------------------------------------------------------------- configs
def test_configs_parse_and_resolve(tmp_path):
    """Every config parses; the main components resolve; defaults are the documented ones."""
    for f in (TRAIN, EVALUATE, INFERENCE, MULTI_GPU, MULTI_GPU_INFERENCE, MULTI_GPU_EVAL, METADATA):
        json.loads(Path(f).read_text())
    over = {"output_dir": str(tmp_path / "out"), "dataset_dir": str(tmp_path / "data"), "network_def": TINY_NET}
    p = config_parser([TRAIN], **over, metadata=METADATA)
    assert p.get_parsed_content("bundle_root") == str(BUNDLE)
    net = p.get_parsed_content("network")
    assert type(net).__name__ == "GMRResNet"
    assert net(torch.rand(2, 3, PATCH, PATCH)).shape == (2, 2)
    for i in ("loss", "optimizer", "lr_scheduler", "train#preprocessing", "validate#preprocessing",
              "validate#postprocessing", "validate#inferer", "train#inferer", "validate#key_metric"):  # fmt: skip
        assert p.get_parsed_content(i) is not None, i
    # defaults: gmr_resnet18 with the GMR kernels, binary, no geometric augmentation, no resume, slides source
    p0 = config_parser([TRAIN], output_dir=str(tmp_path / "out"), metadata=METADATA)
    nd = p0.get("network_def")
    assert nd["_target_"] == "monai_gmr.nets.gmr_resnet18" and nd["kernel_sizes"] == [9, 9, 5, 5]
    assert p0.get_parsed_content("num_classes") == 2 and p0.get_parsed_content("patch_size") == 96
    assert p0.get_parsed_content("augment_rotation") is False and p0.get_parsed_content("resume") is False
    assert p0.get_parsed_content("data_source") == "wsi" and p0.get_parsed_content("wsi_backend") == "openslide"
    names = [type(t).__name__ for t in p0.get_parsed_content("train#preprocessing").transforms]
    assert "RandRotated" not in names and "RandFlipd" not in names
    pa = config_parser([TRAIN], output_dir=str(tmp_path / "out"), augment_rotation=True, metadata=METADATA)
    names = [type(t).__name__ for t in pa.get_parsed_content("train#preprocessing").transforms]
    assert {"RandRotated", "RandFlipd", "RandRotate90d", "CenterSpatialCropd"} <= set(names)
    assert pa.get_parsed_content("train#read_size") == 136  # rotation context of a 96 patch

    pe = config_parser([TRAIN, EVALUATE], **{**over, "tta": True}, metadata=METADATA)
    assert type(pe.get_parsed_content("validate#inferer")).__name__ == "RotationTTAInferer"
    rob = pe.get_parsed_content("robustness")
    assert len(rob["angles"]) == 36 and rob["flips"] == ["h", "v"] and rob["metrics"] == ["accuracy", "auc"]
    assert type(rob["inferer"]).__name__ == "CenterCropInferer"
    assert pe.get_parsed_content("context_size") == 136
    assert type(pe.get_parsed_content("slide_inference")).__name__ == "SlideInference"

    pi = config_parser([INFERENCE], **over, metadata=METADATA)
    for i in ("network", "preprocessing", "inferer"):
        assert pi.get_parsed_content(i) is not None, i
    si = pi.get_parsed_content("slide_inference")
    assert type(si).__name__ == "SlideInference" and si.kwargs["mode"] == "sliding"
    assert si.kwargs["grid"] == "centered"  # the setting reaches infer_slide; default: the symmetric grid
    pc = config_parser([INFERENCE], **over, grid="top_left", metadata=METADATA)
    assert pc.get_parsed_content("slide_inference").kwargs["grid"] == "top_left"
    pec = config_parser([TRAIN, EVALUATE], **over, grid="top_left", metadata=METADATA)
    assert pec.get_parsed_content("slide_inference").kwargs["grid"] == "top_left"
    assert pe.get_parsed_content("slide_inference").kwargs["grid"] == "centered"
    # the slide maps of evaluate.json score the class and map size given, as inference.json does (they were fixed to
    # class 1 and 2048 pixels: --tumour_class / --map_max_size were silently ignored)
    kw = config_parser([TRAIN, EVALUATE], **over, tumour_class=0, map_max_size=512, metadata=METADATA).get_parsed_content(
        "slide_inference").kwargs
    assert kw["tumour_class"] == 0 and kw["map_max_size"] == 512
    assert pe.get_parsed_content("slide_inference").kwargs["tumour_class"] == 1 == pi.get_parsed_content("tumour_class")
    pm = config_parser([TRAIN, MULTI_GPU], metadata=METADATA)
    assert pm.get("network")["_target_"] == "torch.nn.parallel.DistributedDataParallel"
    assert pm.get("train#dataloader#shuffle") is False
    assert pm.get("train#sampler")["_target_"] == "monai_gmr.workflows.distributed_sampler"  # MONAI's, checked first
    pmi = config_parser([INFERENCE, MULTI_GPU_INFERENCE], metadata=METADATA)
    assert "init_process_group" in " ".join(pmi.get("initialize")) and pmi.get("finalize")


@pytest.mark.parametrize("text", ["false", "true"])
def test_switches_given_as_text_mean_what_they_say(tmp_path, text):
    """``--tta false`` / ``--strict false`` arrive as the strings "false" / "true" from the command line; a bare
    non-empty string is true, so "false" used to switch them (and AMP, augmentation, slide evaluation) on."""
    on = text == "true"
    over = {"output_dir": str(tmp_path / "out"), "dataset_dir": str(tmp_path / "data"), "network_def": TINY_NET}
    switches = {k: text for k in ("amp", "tta", "augment_rotation", "slide_eval", "generate_synthetic", "compile")}
    p = config_parser([TRAIN, EVALUATE], **over, **switches, metadata=METADATA)
    assert (p.get_parsed_content("train#read_size") == 136) is on
    assert (type(p.get_parsed_content("validate#inferer")).__name__ == "RotationTTAInferer") is on
    assert p.get_parsed_content("robustness#amp") is on and p.get_parsed_content("run_slide_eval") is on
    assert p.get_parsed_content("train#dataset#generate") is on
    assert p.get_parsed_content("train#trainer#compile") is on and p.get_parsed_content("validate#evaluator#compile") is on
    # the robustness evaluator and the slide maps (not MONAI engines) run the compiled network too, the checkpoint
    # loads into @network (no patches are read: the evaluator gets an empty loader)
    p.update({"robustness_data#dataloader": []})
    net = p.get_parsed_content("network")
    for other in (p.get_parsed_content("robustness_evaluator").network, p.get_parsed_content("slide_inference").network):
        assert (other is net) is not on
        assert not on or (type(other).__name__ == "CompiledModule" and other.module is net)
    pi = config_parser([INFERENCE], **over, **switches, strict=text, metadata=METADATA)
    si = pi.get_parsed_content("slide_inference")
    assert si.strict is on and si.kwargs["amp"] is on and si.generate is on
    assert (si.network is pi.get_parsed_content("network")) is not on
    assert not on or (type(si.network).__name__ == "CompiledModule" and si.network.module is pi.get_parsed_content("network"))
    check_switches_read_as_bool(CONFIGS)


@pytest.mark.parametrize("config, workflow_type", [("train.json", "train"), ("inference.json", "infer")])
def test_monai_bundle_properties(slides, tmp_path, config, workflow_type):
    check_monai_properties(str(CONFIGS / config), METADATA, workflow_type, dataset_dir=slides["root"],
                           output_dir=str(tmp_path / "out"), patch_size=SYNTH["patch_size"], num_workers=0)  # fmt: skip


def test_best_checkpoint_keeps_the_latest_of_equal_scores(tmp_path):
    """``model.pt`` follows the latest epoch among those with the best validation score (key_metric_greater_or_equal)."""
    out = tmp_path / "out"
    p = config_parser([TRAIN], output_dir=str(out), dataset_dir=str(tmp_path / "data"), network_def=TINY_NET,
                      metadata=METADATA)  # fmt: skip
    check_best_saver_keeps_the_latest_tie(p, out / "models")


def test_train_transforms_on_a_slide_patch(slides, tmp_path):
    """Training transforms: [0, 255] -> [0, 1] float patches and long labels; the rotation switch reads a larger
    context, rotates and crops back to the patch size."""
    over = {"output_dir": str(tmp_path / "o"), "dataset_dir": slides["root"], "generate_synthetic": False,
            "patch_size": PATCH, "num_workers": 0}  # fmt: skip
    for augment in (False, True):
        p = config_parser([TRAIN], **over, augment_rotation=augment, metadata=METADATA)
        ds = p.get_parsed_content("train#dataset")
        d = ds[0]
        assert tuple(d["image"].shape) == (3, PATCH, PATCH) and d["image"].dtype == torch.float32
        assert -0.2 <= float(d["image"].min()) and float(d["image"].max()) <= 1.3
        assert d["label"].dtype == torch.long and int(d["label"]) in (0, 1)
        assert ds.patch_size == ((46, 46) if augment else (PATCH, PATCH))


# ---------------------------------------------------------------------------------------------------------- metadata
def test_metadata_value_ranges_hold_for_the_network_outputs(tmp_path):
    """network_data_format is truthful: the network outputs logits (outside [0, 1]), so ``outputs.pred`` declares
    no range; the softmax probabilities of the post-processing are in the declared [0, 1]."""
    meta = json.loads(Path(METADATA).read_text())["network_data_format"]
    spec_in, pred = meta["inputs"]["image"], meta["outputs"]["pred"]
    torch.manual_seed(0)
    net = config_parser([INFERENCE], output_dir=str(tmp_path), metadata=METADATA).get_parsed_content("network_def").eval()
    lo, hi = spec_in["value_range"]
    with torch.no_grad():
        logits = net(lo + (hi - lo) * torch.rand(8, spec_in["num_channels"], *spec_in["spatial_shape"]))
    assert logits.shape == (8, pred["num_channels"])
    check_logits_metadata(logits, pred)
    post = meta["post_processed_outputs"]["pred"]
    assert post["type"] == "probabilities" and post["num_channels"] == pred["num_channels"]
    probs = torch.softmax(logits, 1)
    assert post["value_range"] == [0, 1] and bool(((probs >= 0) & (probs <= 1)).all())


def test_verify_metadata_offline():
    from monai.bundle import verify_metadata

    schema = shared_path("monai", "meta_schema_20240725.json")
    verify_metadata(meta_file=METADATA, filepath=str(schema), hash_val="06954cad2cc5d3784e72077ac76f0fc8")
    meta = json.loads(Path(METADATA).read_text())
    assert meta["required_packages_version"]["monai_gmr"] == "0.1.0"
    assert "optional_packages_version" not in meta
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == [96, 96]


def test_verify_net_in_out():
    from monai.bundle import verify_net_in_out

    verify_net_in_out(net_id="network_def", meta_file=METADATA, config_file=INFERENCE, device="cpu")
    with pytest.raises(ValueError, match="output channel"):
        verify_net_in_out(net_id="network_def", meta_file=METADATA, config_file=INFERENCE, device="cpu", num_classes=3)


# ---------------------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, slides) -> dict:
    """A training run (``TRAIN_ARGS``, generating its synthetic slides, from another working directory) followed by
    inference over a slide list with two bad slides, shared by the end-to-end test and the compiled-inference
    comparison (one bundle subprocess less). What the runs left is recorded right after them (logs, training summary,
    model files, inference summary and maps): the end-to-end test goes on to write ``eval/`` into ``out``."""
    root = tmp_path_factory.mktemp("wsi_trained_run")
    data, out = root / "data", root / "run"
    cwd = root / "elsewhere"  # any working directory
    cwd.mkdir()
    train = run_bundle([TRAIN], *_common(data, out), *TRAIN_ARGS, cwd=cwd)
    run = {
        "data": data, "out": out, "cwd": cwd, "train_log": train.stdout + train.stderr,
        "summary": json.loads((out / "train_summary.json").read_text()),
        "models": sorted(p.name for p in (out / "models").iterdir()),
    }  # fmt: skip
    # inference over a slide list: the bad slides are reported and skipped, the others finish
    good = sorted(str(p) for p in (data / "slides").glob("*.tiff"))
    missing = str(root / "missing.svs")
    run["good"], run["missing"] = good, missing
    run["input_slides"] = [good[0], missing, slides["corrupt"], good[2]] if len(good) == 3 else good
    infer = run_bundle([INFERENCE], *_common(data, out), "--input_slides", repr(run["input_slides"]), cwd=cwd)
    pred = out / "pred"
    run["infer_log"] = infer.stdout + infer.stderr
    run["pred_files"] = sorted(p.name for p in pred.iterdir())
    run["probs"] = {p.name: np.load(p) for p in sorted(pred.glob("*_prob.npy"))}
    return run


def test_train_evaluate_infer_end_to_end(trained_run, slides):
    data, out, cwd = trained_run["data"], trained_run["out"], trained_run["cwd"]
    assert "holds no slides: generating 3 synthetic slides" in trained_run["train_log"]
    models = out / "models"
    assert "model.pt" in trained_run["models"] and (models / "model.pt").is_file()
    assert {p for p in trained_run["models"] if p.startswith("checkpoint_epoch=") and p.endswith(".pt")} == {
        "checkpoint_epoch=1.pt", "checkpoint_epoch=2.pt"}
    summary = trained_run["summary"]
    assert summary["epochs_completed"] == 2 and summary["iterations_completed"] == 4 and not summary["resumed"]
    assert summary["key_metric_name"] == "val_auc" and 0.0 <= summary["best_metric"] <= 1.0
    assert np.isfinite(summary["final_loss"])
    assert list((out / "logs").glob("events.out.tfevents.*"))

    # evaluation: right angles and flips are exact for the GMR ResNet (32-pixel patches, 46-pixel context)
    run_bundle([TRAIN, EVALUATE], *_common(data, out), "--robustness_angles", "[0, 45, 90, 180, 270]", cwd=cwd)
    ev = out / "eval"
    for f in ("robustness.json", "robustness.csv", "robustness_polar.png", "metrics.json"):
        assert (ev / f).is_file() and (ev / f).stat().st_size > 0, f
    rep = json.loads((ev / "robustness.json").read_text())
    assert rep["angles"] == [0, 45, 90, 180, 270] and sorted(rep["per_flip"]) == ["h", "v"]
    for m in ("accuracy", "auc"):
        vals = rep["per_angle"][m]
        assert all(v is not None and 0.0 <= v <= 1.0 for v in vals), (m, vals)
        for i in (2, 3, 4):
            assert abs(vals[i] - vals[0]) < 1e-6, (m, vals)
        for f in ("h", "v"):
            assert abs(rep["per_flip"][f][m] - vals[0]) < 1e-6, (m, f)
    metrics = json.loads((ev / "metrics.json").read_text())
    n_test = len(slides["test"])  # same seed and size: the bundle generated the same dataset
    assert metrics["n_patches"] == n_test and metrics["context_size"] == 46
    assert abs(metrics["metrics"]["val_auc"] - rep["per_angle"]["auc"][0]) < 1e-6
    assert abs(metrics["metrics"]["val_accuracy"] - rep["per_angle"]["accuracy"][0]) < 1e-6
    # slide-level map quality against the ground-truth tumour mask of the test slide
    sl = metrics["slides"]
    assert sl["n_ok"] == 1 and sl["n_failed"] == 0 and sl["patches_per_s"] > 0
    m = sl["slides"][0]["metrics"]
    assert 0.0 <= m["pixel_auc"] <= 1.0 and 0.0 <= m["dice"] <= 1.0 and 0.0 < m["tumour_fraction"] < 1.0
    assert sl["map_quality"]["mean_pixel_auc"] == m["pixel_auc"]
    name = sl["slides"][0]["name"]
    assert np.load(ev / "maps" / f"{name}_prob.npy").shape == (256, 256)  # level 2 of a 1024 slide
    csv_lines = (ev / "robustness.csv").read_text().splitlines()
    assert csv_lines[0].startswith("model,view,kind,angle,flip") and len(csv_lines) >= 1 + 5 + 2

    # inference over a slide list (run by the fixture): the bad slides are reported and skipped, the others finish
    pred = out / "pred"
    good, missing = trained_run["good"], trained_run["missing"]
    assert len(good) == 3
    assert trained_run["input_slides"] == [good[0], missing, slides["corrupt"], good[2]]
    log = trained_run["infer_log"]
    assert "patches/s (reading included)" in log
    assert "skipping slide 2/4" in log and "missing.svs" in log and "skipping slide 3/4" in log
    summ = json.loads((pred / "inference_summary.json").read_text())
    assert summ["n_ok"] == 2 and summ["n_failed"] == 2 and summ["patches_per_s"] > 0
    errors = {e["slide"]: e["error"] for e in summ["slides"] if e["status"] == "error"}
    assert "does not exist" in errors[missing] and "cannot read slide" in errors[slides["corrupt"]]
    for g in (good[0], good[2]):
        stem = Path(g).stem
        prob = np.load(pred / f"{stem}_prob.npy")
        assert prob.shape == (256, 256) and prob.dtype == np.float32
        assert 0.0 <= prob.min() and prob.max() <= 1.0 and prob.max() > 0.0
        assert np.array(Image.open(pred / f"{stem}_heatmap.png")).shape == (256, 256, 3)
        tissue = np.array(Image.open(pred / f"{stem}_tissue.png")) > 0
        assert tissue.shape == (256, 256) and 0.2 < tissue.mean() < 0.9
        # probabilities only in the cells of patches with >= 25% tissue (cells may overhang the tissue border)
        assert (prob[~tissue] == 0).mean() > 0.85 and (prob[tissue] > 0).mean() > 0.85
    assert not [p for p in trained_run["pred_files"] if p.startswith(".")]  # no temporary files left


def _compiled_vs_eager_setup(tmp_path, slides):
    data, out = Path(slides["root"]), tmp_path / "run"
    torch.manual_seed(0)  # an untrained network is enough to compare the two runs
    net = config_parser([INFERENCE], network_def=TINY_NET, metadata=METADATA).get_parsed_content("network_def")
    (out / "models").mkdir(parents=True)
    torch.save({"model": net.state_dict()}, out / "models" / "model.pt")
    return data, out, {"eager": [], "compiled": ["--compile", "true", "--compile_kwargs", "{'backend': 'aot_eager'}"]}


def _assert_same_maps(got: dict, ref: dict) -> None:
    assert ref and sorted(got) == sorted(ref)
    for f, p in ref.items():
        assert p.max() > 0, f
        np.testing.assert_allclose(got[f], p, atol=1e-5, err_msg=f)


def test_compiled_slide_inference_matches_eager(tmp_path, trained_run):
    """``--compile true`` (aot_eager: no C compiler) runs inference.json's slide inference (not a MONAI engine)
    through torch.compile: the eager probability maps (to 1e-5) of the shared ``trained_run`` (same model, data and
    settings), for one of its good slides. inference.json had no ``compile`` setting, so ``--compile true`` was
    refused there."""
    assert "through torch.compile" not in trained_run["infer_log"]  # the eager run
    slide = trained_run["good"][0]
    pred = tmp_path / "pred_compiled"
    proc = run_bundle([INFERENCE], *_common(trained_run["data"], trained_run["out"]), "--generate_synthetic", "false",
                      "--input_slides", repr([slide]), "--pred_dir", str(pred), "--compile", "true",
                      "--compile_kwargs", "{'backend': 'aot_eager'}", cwd=tmp_path)  # fmt: skip
    assert "through torch.compile(backend='aot_eager')" in proc.stdout + proc.stderr
    compiled = {p.name: np.load(p) for p in sorted(pred.glob("*_prob.npy"))}
    eager = {f: p for f, p in trained_run["probs"].items() if f == f"{Path(slide).stem}_prob.npy"}
    _assert_same_maps(compiled, eager)


@pytest.mark.slow
def test_compiled_evaluation_matches_eager(tmp_path, slides):
    """evaluate.json with ``--compile true``: the robustness evaluation and the slide maps (not MONAI engines) run
    through torch.compile and give the eager report and maps (to 1e-5). Slow: 2 bundle runs; the compile wiring of
    evaluate.json is checked in the fast test of the switches."""
    data, out, runs = _compiled_vs_eager_setup(tmp_path, slides)
    reports, maps = {}, {}
    for name, extra in runs.items():
        ev = tmp_path / f"eval_{name}"
        proc = run_bundle([TRAIN, EVALUATE], *_common(data, out), "--generate_synthetic", "false", "--robustness_angles",
                          "[0, 45]", "--robustness_flips", "['h']", "--eval_dir", str(ev), *extra, cwd=tmp_path)  # fmt: skip
        logs = proc.stdout + proc.stderr
        assert ("through torch.compile(backend='aot_eager')" in logs) is (name == "compiled")
        reports[name] = json.loads((ev / "robustness.json").read_text())["per_angle"]
        maps[name] = {p.name: np.load(p) for p in sorted((ev / "maps").glob("*_prob.npy"))}
    for m, vals in reports["eager"].items():
        np.testing.assert_allclose(reports["compiled"][m], vals, atol=1e-5, err_msg=m)
    _assert_same_maps(maps["compiled"], maps["eager"])


def test_resume_after_kill(tmp_path, slides):
    """Kill (SIGKILL) training right after the first checkpoint; ``--resume true`` continues from epoch 1."""
    data, out = Path(slides["root"]), tmp_path / "run"
    args = [*_common(data, out), *TRAIN_ARGS, "--epochs", "3", "--val_interval", "2", "--generate_synthetic", "false"]
    check_kill_and_resume(TRAIN, args, out, tmp_path)


def test_multi_gpu_train_seeds_augmentations_per_rank(monkeypatch):
    check_multi_gpu_seeds_per_rank(TRAIN, MULTI_GPU, metadata=METADATA, monkeypatch=monkeypatch)


def test_multi_gpu_train_gloo_two_processes(tmp_path, slides):
    """multi_gpu_train.json on CPU: torchrun, 2 processes, gloo backend, DDP + DistributedSampler."""
    out = tmp_path / "run"
    cfg = f"['{TRAIN}','{MULTI_GPU}']"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "monai.bundle", "run",
        "--config_file", cfg, *_common(Path(slides["root"]), out), "--generate_synthetic", "false",
        "--epochs", "2", "--batch_size", "4", "--log_interval", "1", *EXACT_VIEWS, "--best_model_metric", "val_rotation_auc_min",
    ]  # fmt: skip
    env = bundle_env()
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["epochs_completed"] == 2
    # the training split is sharded by DistributedSampler: each rank sees ceil(n_train / 2) patches per epoch
    n_train = len(slides["training"])
    assert summary["iterations_completed"] == 2 * int(np.ceil(np.ceil(n_train / 2) / 4))
    ck = torch.load(out / "models" / "checkpoint_epoch=2.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in ck["model"])  # DDP unwrapped: loadable by a plain network
    assert (out / "models" / "model.pt").is_file()
    # the rotated validation, sharded over both processes and merged, equals the all-gathered validation metrics
    check_rotated_validation(log, out / "logs", {"val_auc": "auc", "val_accuracy": "accuracy"}, epochs=2)
    n_val = len(slides["validation"])  # each patch scored once: not once per process
    assert log.count(f"rotation robustness of GMRResNet: {n_val} images x 5 views") == 2, log[-6000:]
    # the rotated worst-view AUC chose model.pt (--best_model_metric), run once per validation (counted above)
    assert summary["key_metric_name"] == "val_rotation_auc_min" and "Got new best metric of val_rotation_auc_min" in log
    assert json.loads((out / "models" / "model.pt.json").read_text())["key_metric"] == "val_rotation_auc_min"


def test_rotated_validation_during_training(tmp_path, slides):
    """``--val_rotation true``: every validation also scores the validation patches rotated and flipped, read with
    the context that evaluate.json reads (``robustness_data``, validation split) and centre-cropped after the rotation,
    logged and written to TensorBoard as ``val_rotation_{accuracy,auc}_{mean,std,min}`` and per-angle curves. Right
    angles and a flip are exact for the GMR ResNet, so the rotated metrics are the validation metrics of the same
    epoch."""
    out = tmp_path / "out"
    proc = run_bundle([TRAIN], *_common(Path(slides["root"]), out), "--generate_synthetic", "false", *TRAIN_ARGS,
                      "--val_interval", "1", *EXACT_VIEWS, cwd=tmp_path)  # fmt: skip
    check_rotated_validation(proc.stdout + proc.stderr, out / "logs", {"val_auc": "auc", "val_accuracy": "accuracy"},
                             epochs=2)  # fmt: skip


def test_config_rotated_validation_settings_are_refused_by_name():
    bad = [("val_rotation_angles", []), ("val_rotation_flips", ["x"]), ("val_rotation_metrics", ["dice"])]
    for configs in ([TRAIN], [TRAIN, MULTI_GPU]):
        check_rotated_validation_settings_refused(configs, metadata=METADATA, bad=bad)


def test_config_key_metric_defaults_to_the_configured_key_metric(tmp_path):
    """A renamed or replaced ``validate#key_metric`` (MONAI's ``val_key_metric`` property) was refused before any
    data (``best_model_metric`` still said 'val_auc'): it keyed the evaluator before ``--best_model_metric`` existed."""
    over = _tiny_overrides(tmp_path / "out", data_source="pcam", pcam_dir=str(_pcam_dir(tmp_path)), patch_size=PATCH)
    for configs in ([TRAIN], [TRAIN, MULTI_GPU]):
        check_key_metric_follows_the_configured_key_metric(configs, metadata=METADATA, default="val_auc",
                                                           build=configs == [TRAIN], **over)  # fmt: skip


def test_config_key_metric_setting_is_refused_by_name():
    """``--best_model_metric``: a metric the run does not compute, or a rotated one without the rotated validation, was
    found only after the slides were read (when the evaluator was built); a spread (``_std``) cannot rank models."""
    rotated = {"val_rotation": True}
    bad = [("val_dice", {}), ("val_rotation_auc_min", {}), ("val_rotation_auc_std", rotated),
           ("val_rotation_dice_min", rotated), ("val_rotation_auc_mean", {**rotated, "val_rotation_metrics": ["accuracy"]})]  # fmt: skip
    for configs in ([TRAIN], [TRAIN, MULTI_GPU]):
        check_key_metric_setting_refused(configs, metadata=METADATA, rotated="val_rotation_accuracy_mean", bad=bad)


def test_rotated_validation_data_are_read_only_when_switched_on(tmp_path, monkeypatch):
    """``robustness_data`` (the validation split read again, around each patch at ``context_size``) is read only with
    ``--val_rotation true`` or by evaluate.json: MONAI resolves every ``@`` of the ``rotation_handlers`` expression,
    so every training run read it (slides checked again, warnings about patches skipped from a split that was not
    skipped, another PCam/image-folder scan)."""
    import monai_gmr.workflows.wsi as wsi

    calls = []

    def recorded(*args, **kwargs):
        calls.append(kwargs["split"])
        return real(*args, **kwargs)

    real = wsi.patch_dataset
    monkeypatch.setattr(wsi, "patch_dataset", recorded)
    over = _tiny_overrides(tmp_path / "out", data_source="pcam", pcam_dir=str(_pcam_dir(tmp_path)), patch_size=PATCH)
    for configs, switch, key, want in (
        ([TRAIN], False, "validate#evaluator", ["validation"]),
        ([TRAIN], True, "validate#evaluator", ["validation", "validation"]),
        ([TRAIN, EVALUATE], False, "robustness_evaluator", ["test"]),  # evaluate.json reads it, switch or not
    ):
        calls.clear()
        config_parser(configs, metadata=METADATA, **over, val_rotation=switch).get_parsed_content(key)
        assert calls == want, (configs, switch, calls)


def test_evaluation_ignores_the_rotated_validation_switch(tmp_path):
    """``--val_rotation true`` carried into an evaluation (the training's command line or ``--args_file``): the
    evaluator ran the rotated validation of the test patches at the training's angles besides the robustness report
    (an evaluation pass per angle) and metrics.json got ``val_rotation_*`` entries, which multi_gpu_evaluate.json left
    out; evaluate.json has no rotated validation (its robustness report is the rotated evaluation)."""
    over = _tiny_overrides(tmp_path / "out", data_source="pcam", pcam_dir=str(_pcam_dir(tmp_path)), patch_size=PATCH,
                           val_rotation=True)  # fmt: skip
    assert config_parser([TRAIN, EVALUATE], **over, metadata=METADATA).get_parsed_content("validate#rotation_handlers") == []
    got = config_parser([TRAIN], **over, metadata=METADATA).get_parsed_content("validate#rotation_handlers")
    assert [type(h).__name__ for h in got] == ["RotationRobustnessHandler"]  # training keeps it
    # --best_model_metric of the training: the evaluation's key metric stays its plain AUC (metrics.json, no rotation)
    over["best_model_metric"] = "val_rotation_auc_min"
    key, additional, handlers = config_parser([TRAIN, EVALUATE], **over, metadata=METADATA).get_parsed_content("validate#metric_choice")
    assert list(key) == ["val_auc"] and list(additional) == ["val_accuracy"] and handlers == []
    key, additional, handlers = config_parser([TRAIN], **over, metadata=METADATA).get_parsed_content("validate#metric_choice")
    assert [type(m).__name__ for m in key.values()] == ["RotationRobustnessMetric"] and list(key) == ["val_rotation_auc_min"]
    assert sorted(additional) == ["val_accuracy", "val_auc"] and handlers == []  # the metric runs the rotation

# ---------------------------------------------------------------------------------------------------------- other data
def _run_workflow(configs, **override) -> None:
    """Run a bundle workflow in-process (``python -m monai.bundle run`` without the subprocess)."""
    from monai.bundle import ConfigWorkflow

    wf = ConfigWorkflow(config_file=configs, workflow_type=None, logging_file=False, **override)
    wf.initialize()
    wf.run()
    wf.finalize()


def _tiny_overrides(out: Path, **kw) -> dict:
    return {"output_dir": str(out), "network_def": TINY_NET, "num_workers": 0, "epochs": 1, "batch_size": 4,
            "val_batch_size": 8, "device": "$torch.device('cpu')", "amp": False, **kw}  # fmt: skip


def _train_summary(out: Path) -> dict:
    return json.loads((out / "train_summary.json").read_text())


def test_train_from_pcam_hdf5(tmp_path):
    """``--data_source pcam --pcam_dir DIR``: PCam-style *_x.h5 / *_y.h5 files, one per split."""
    from monai_gmr.data import write_pcam_h5

    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("valid", 6), ("test", 6)):
        y = np.arange(n) % 2
        x = rng.integers(0, 120, (n, 48, 48, 3), dtype=np.uint8)
        x[y == 1, 12:36, 12:36] = 230  # a learnable bright square in tumour patches
        write_pcam_h5(tmp_path / "pcam" / f"camelyonpatch_level_2_split_{split}", x, y)
    out = tmp_path / "out"
    over = _tiny_overrides(out, data_source="pcam", pcam_dir=str(tmp_path / "pcam"), patch_size=PATCH)
    _run_workflow(TRAIN, **over)
    s = _train_summary(out)
    assert s["epochs_completed"] == 1 and s["iterations_completed"] == 3 and 0.0 <= s["best_metric"] <= 1.0
    _run_workflow([TRAIN, EVALUATE], **over, robustness_angles=[0, 90])
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert metrics["n_patches"] == 6 and "slides" in metrics and metrics["slides"] is None  # no slides to map
    assert 0.0 <= metrics["metrics"]["val_auc"] <= 1.0


def test_train_and_evaluate_from_image_folders_multiclass(tmp_path):
    """``--data_source image_folder --image_dir DIR``: class folders (Kather layout), 3 classes, and a labels CSV."""
    rng = np.random.default_rng(0)
    colours = {"01_TUMOR": (90, 40, 140), "02_STROMA": (230, 120, 180), "03_LYMPHO": (40, 40, 90)}
    for c, col in colours.items():
        (tmp_path / "tiles" / c).mkdir(parents=True)
        for i in range(6):
            img = np.clip(np.array(col) + rng.normal(0, 15, (56, 56, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(tmp_path / "tiles" / c / f"{c}_{i}.png")
    out = tmp_path / "out"
    over = _tiny_overrides(out, data_source="image_folder", image_dir=str(tmp_path / "tiles"), num_classes=3,
                           patch_size=PATCH)  # fmt: skip
    _run_workflow(TRAIN, **over)
    assert _train_summary(out)["epochs_completed"] == 1
    _run_workflow([TRAIN, EVALUATE], **over, robustness_angles=[0, 30, 90])
    rep = json.loads((out / "eval" / "robustness.json").read_text())
    assert rep["angles"] == [0, 30, 90] and all(0.0 <= v <= 1.0 for v in rep["per_angle"]["accuracy"])
    # a Kaggle-style labels CSV (id,label, images in a sub-folder, ids without extension)
    (tmp_path / "kaggle" / "train").mkdir(parents=True)
    rows = ["id,label"]
    for i in range(10):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "kaggle" / "train" / f"p{i}.tif")
        rows.append(f"p{i},{i % 2}")
    (tmp_path / "kaggle" / "labels.csv").write_text("\n".join(rows) + "\n")
    out2 = tmp_path / "out2"
    _run_workflow(TRAIN, **_tiny_overrides(out2, data_source="image_folder", image_dir=str(tmp_path / "kaggle"),
                                           labels_csv="labels.csv", patch_size=PATCH))  # fmt: skip
    assert _train_summary(out2)["epochs_completed"] == 1


def test_train_and_evaluate_without_tensorboard(tmp_path, slides, monkeypatch):
    """Without the tensorboard package (e.g. a minimal GPU image) training and evaluation still run (warning
    logged, no event files)."""
    from monai_gmr.workflows.wsi import NullSummaryWriter, summary_writer, tensorboard_available

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # any import of it now raises ImportError
    assert not tensorboard_available()
    w = summary_writer(tmp_path / "tb")
    assert isinstance(w, NullSummaryWriter) and w.add_scalar("a", 1.0, 1) is None
    out = tmp_path / "out"
    over = _tiny_overrides(out, dataset_dir=slides["root"], generate_synthetic=False, patch_size=PATCH, epoch_length=2)
    _run_workflow(TRAIN, **over)
    assert _train_summary(out)["iterations_completed"] == 2
    _run_workflow([TRAIN, EVALUATE], **over, robustness_angles=[0, 90], slide_eval=False)
    rep = json.loads((out / "eval" / "robustness.json").read_text())
    assert rep["per_angle"]["auc"][0] == pytest.approx(rep["per_angle"]["auc"][1], abs=1e-6)
    assert not list(out.rglob("events.out.tfevents.*"))


def test_train_from_real_patch_collections(tmp_path):
    """Real patches from ../shared (skipped when absent): Kaggle HCD (PCam) tiles with id,label CSV, Kather 2016."""
    hcd = shared_path("data", "pcam_kaggle_hcd_patches")
    kather = shared_path("data", "kather2016_crc_texture_tiles")
    out = tmp_path / "hcd"
    _run_workflow(TRAIN, **_tiny_overrides(out, data_source="image_folder", image_dir=str(hcd),
                                           labels_csv="mock_train_labels.csv", patch_size=96))  # fmt: skip
    s = _train_summary(out)
    assert s["epochs_completed"] == 1 and s["iterations_completed"] >= 2 and np.isfinite(s["final_loss"])
    out = tmp_path / "kather"
    _run_workflow(TRAIN, **_tiny_overrides(out, data_source="image_folder", image_dir=str(kather), num_classes=8,
                                           patch_size=64, val_frac=0.34, test_frac=0.0))  # fmt: skip
    s = _train_summary(out)
    assert s["epochs_completed"] == 1 and 0.0 <= s["best_metric"] <= 1.0


def test_real_slide_inference_through_the_config(tmp_path):
    """Inference config on ../shared CMU-1 small region (one level, 2220 x 2967): tissue mask + probability map."""
    svs = shared_path("data", "wsi_cmu1_small_region", "cmu_small_region.svs")
    p = config_parser([INFERENCE], metadata=METADATA, output_dir=str(tmp_path / "out"), network_def=TINY_NET, input_slides=[str(svs)],
                map_max_size=1024, num_workers=0, batch_size=32, device="$torch.device('cpu')", amp=False)  # fmt: skip
    summary = p.get_parsed_content("slide_inference").run()
    assert summary["n_ok"] == 1
    e = summary["slides"][0]
    assert e["map_level"] == 0 and e["map_downsample"] == 3.0 and e["map_shape"] == [989, 740]  # ceil(2967/1024)=3
    assert 0.05 < e["tissue_fraction"] < 0.95 and e["n_patches"] > 50 and e["patches_per_s"] > 0
    prob = np.load(e["files"]["prob"])
    tissue = np.array(Image.open(e["files"]["tissue"])) > 0
    assert prob.shape == tissue.shape == (989, 740) and ((prob >= 0) & (prob <= 1)).all()
    assert Path(e["files"]["heatmap"]).stat().st_size > 0


# ---------------------------------------------------------------------------------------------------------- errors
def _dataset_with_csv(tmp_path: Path, slides: dict, rows: list[str]) -> Path:
    d = tmp_path / "csvdata"
    d.mkdir()
    good = slides["training"][0]
    base = [f"{good['image']},{good['location'][1]},{good['location'][0]},1,training",
            f"{good['image']},{good['location'][1]},{good['location'][0]},1,validation"]  # fmt: skip
    (d / "patches.csv").write_text("slide,x,y,label,split\n" + "\n".join(base + rows) + "\n")
    return d


@pytest.mark.parametrize("bad", ["outside", "missing", "corrupt", "level"])
def test_bad_training_data_errors_name_the_slide(tmp_path, slides, bad):
    """A patch outside its slide, a missing or corrupt slide, or a level that does not exist stop training before
    anything is written, with an error naming the slide."""
    good = slides["training"][0]["image"]
    rows = {
        "outside": [f"{good},1010,40,0,training"],
        "missing": [f"{tmp_path / 'gone_slide.svs'},100,100,0,training"],
        "corrupt": [f"{slides['corrupt']},100,100,0,training"],
        "level": [],
    }[bad]
    data = _dataset_with_csv(tmp_path, slides, rows)
    out = tmp_path / "out"
    over = {"dataset_dir": str(data), "output_dir": str(out), "generate_synthetic": False, "patch_size": PATCH,
            "network_def": TINY_NET, "num_workers": 0}  # fmt: skip
    if bad == "level":
        over["patch_level"] = 5
    msg = workflow_error(TRAIN, **over)
    named = {"outside": good, "missing": "gone_slide.svs", "corrupt": "corrupt.svs", "level": good}[bad]
    text = {"outside": "outside the slide", "missing": "does not exist", "corrupt": "cannot read slide",
            "level": "level 5 does not exist"}[bad]  # fmt: skip
    assert named in msg and text in msg, msg
    assert no_outputs(out)


def test_missing_dataset_without_generation_and_missing_checkpoint(tmp_path):
    out = tmp_path / "out"
    msg = workflow_error(TRAIN, dataset_dir=str(tmp_path / "missing"), output_dir=str(out), generate_synthetic=False)
    assert str(tmp_path / "missing") in msg and "generation is disabled" in msg, msg
    assert no_outputs(out) and not (tmp_path / "missing").exists()
    msg = workflow_error([TRAIN, EVALUATE], dataset_dir=str(tmp_path / "missing"), output_dir=str(out),
                      generate_synthetic=False, network_def=TINY_NET)  # fmt: skip
    assert "generation is disabled" in msg or "model.pt" in msg, msg
    msg = workflow_error(INFERENCE, output_dir=str(out), network_def=TINY_NET, input_slides=["x.svs"])
    assert "model.pt" in msg and "does not exist" in msg, msg
    assert no_outputs(out)


@pytest.mark.parametrize("bad", BAD_TRAIN_SETTINGS, ids=lambda d: "-".join(f"{k}={v}" for k, v in d.items()))
def test_bad_settings_write_nothing(tmp_path, slides, bad):
    """A setting that is only checked while the trainer is built or started (after its TensorBoard writer and
    checkpoint savers exist) stops the run without an event file in logs/ or an empty models/ folder."""
    out = tmp_path / "out"
    over = _tiny_overrides(out, dataset_dir=slides["root"], generate_synthetic=False, patch_size=PATCH, epoch_length=1)
    msg = workflow_error(TRAIN, **{**over, **bad})
    assert f"{next(iter(bad))} must be" in msg, msg  # the error names the setting
    assert no_outputs(out), sorted(str(p.relative_to(out)) for p in out.rglob("*"))


@pytest.mark.parametrize("bad", [{"slide_eval": "maybe"}, {"inference_mode": "dense"}, {"overlap": 1.0},
                                 {"grid": "middle"}, {"map_max_size": -1}, {"tumour_class": 2}],
                         ids=lambda d: "-".join(f"{k}={v}" for k, v in d.items()))  # fmt: skip
def test_bad_evaluation_and_inference_settings_write_nothing(tmp_path, slides, bad):
    """Slide-evaluation settings were read only in the third run step, after the robustness report had been
    written (and a bad mode failed every slide after inference_summary.json was started): now the run stops first."""
    out = tmp_path / "out"
    net = config_parser([INFERENCE], network_def=TINY_NET, output_dir=str(out), metadata=METADATA).get_parsed_content("network_def")
    (out / "models").mkdir(parents=True)
    torch.save({"model": net.state_dict()}, out / "models" / "model.pt")
    over = _tiny_overrides(out, dataset_dir=slides["root"], generate_synthetic=False, patch_size=PATCH, **bad)
    workflow_error([TRAIN, EVALUATE], **over, robustness_angles=[0, 90])
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == ["models", "models/model.pt"]
    if "slide_eval" not in bad:
        workflow_error(INFERENCE, **{k: v for k, v in over.items() if k in ("output_dir", "network_def", "device", "amp")},
                       input_slides=[str(Path(slides["root"]) / slides["slides"][0]["image"])], **bad)  # fmt: skip
        assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == ["models", "models/model.pt"]


# ---------------------------------------------------------------------------------------------------------- classes
def _pcam_dir(tmp_path: Path, valid_labels: list[int] | None = None) -> Path:
    """PCam-style train/valid/test files of 32-pixel patches, labels 0/1 (``valid_labels``: the validation ones)."""
    from monai_gmr.data import write_pcam_h5

    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("valid", 6), ("test", 4)):
        y = np.array(valid_labels) if split == "valid" and valid_labels is not None else np.arange(n) % 2
        write_pcam_h5(tmp_path / "pcam" / f"camelyonpatch_level_2_split_{split}",
                      rng.integers(0, 255, (len(y), PATCH, PATCH, 3), dtype=np.uint8), y)  # fmt: skip
    return tmp_path / "pcam"


def test_validation_auc_is_defined_with_more_classes_than_the_data(tmp_path, slides, caplog):
    """``--num_classes 3`` on two-class slides: class 2 has no validation patch, so MONAI's macro ROC-AUC was NaN
    (and the best checkpoint stuck at epoch 1); the key metric is now the macro AUC of classes 0 and 1, and warnings
    name the missing class."""
    out = tmp_path / "out"
    over = _tiny_overrides(out, dataset_dir=slides["root"], generate_synthetic=False, patch_size=PATCH, epoch_length=2,
                           epochs=2, num_classes=3)  # fmt: skip
    with caplog.at_level("WARNING"):
        _run_workflow(TRAIN, **over)
    s = _train_summary(out)
    assert s["key_metric_name"] == "val_auc" and s["epochs_completed"] == 2
    assert np.isfinite(s["best_metric"]) and 0.0 <= s["best_metric"] <= 1.0, s
    assert (out / "models" / "model.pt").is_file()
    assert "no sample of class(es) [2] (num_classes=3" in caplog.text  # the datasets, before training
    assert "val_auc: the one-vs-rest ROC-AUC of class(es) [2] is undefined" in caplog.text  # the metric


@pytest.mark.parametrize("source", ["wsi", "pcam", "image_folder"])
def test_labels_outside_num_classes_stop_training_naming_it(tmp_path, slides, source):
    """Labels 0/1 with ``--num_classes 1``: an error naming num_classes before anything is written (PCam labels
    were not checked: training failed in its first step, after the TensorBoard writer had been created)."""
    out = tmp_path / "out"
    over = _tiny_overrides(out, patch_size=PATCH, num_classes=1, epoch_length=1)
    if source == "wsi":
        over.update(dataset_dir=slides["root"], generate_synthetic=False)
    elif source == "pcam":
        over.update(data_source="pcam", pcam_dir=str(_pcam_dir(tmp_path)))
    else:
        for c in ("a", "b"):
            (tmp_path / "tiles" / c).mkdir(parents=True)
            for i in range(5):
                Image.fromarray(np.full((40, 40, 3), 60 + 100 * (c == "b") + i, np.uint8)).save(tmp_path / "tiles" / c / f"{i}.png")
        over.update(data_source="image_folder", image_dir=str(tmp_path / "tiles"))
    msg = workflow_error(TRAIN, **over)
    assert "num_classes=1" in msg, msg
    assert no_outputs(out)


def test_single_class_validation_split_is_an_error(tmp_path):
    """A validation split with one class has no ROC-AUC at all (the key metric): an error before training."""
    out = tmp_path / "out"
    over = _tiny_overrides(out, data_source="pcam", pcam_dir=str(_pcam_dir(tmp_path, valid_labels=[0] * 6)),
                           patch_size=PATCH)  # fmt: skip
    msg = workflow_error(TRAIN, **over)
    assert "validation patches of pcam_dir" in msg and "needs at least 2" in msg, msg
    assert no_outputs(out)
    # evaluation may score a single-class split (accuracy; the AUC is then undefined)
    assert config_parser([TRAIN, EVALUATE], output_dir=str(out), metadata=METADATA).get("validate#dataset#min_classes") == 1


@pytest.mark.slow
def test_multi_gpu_inference_gloo_two_processes(tmp_path, slides):
    """multi_gpu_inference.json on CPU (torchrun, 2 processes, gloo): each slide's patches are sharded with
    DistributedSampler and gathered; rank 0 writes the same map as a single-process run."""
    from monai_gmr.workflows.wsi import infer_slide

    net = config_parser([INFERENCE], network_def=TINY_NET, output_dir=str(tmp_path), metadata=METADATA).get_parsed_content("network_def")
    ckpt = tmp_path / "model.pt"
    torch.save({"model": net.state_dict()}, ckpt)
    good = sorted(str(Path(slides["root"]) / m["image"]) for m in slides["slides"])[:2]
    pred = tmp_path / "pred"
    cfg = f"['{INFERENCE}','{MULTI_GPU_INFERENCE}']"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "monai.bundle", "run",
        "--config_file", cfg, "--network_def", repr(TINY_NET), "--ckpt_path", str(ckpt), "--pred_dir", str(pred),
        "--input_slides", repr(good + [str(tmp_path / "missing.svs")]), "--patch_size", str(PATCH),
        "--num_workers", "0", "--batch_size", "16",
    ]  # fmt: skip
    env = bundle_env()
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    summ = json.loads((pred / "inference_summary.json").read_text())
    assert summ["n_ok"] == 2 and summ["n_failed"] == 1
    assert all(e["settings"]["processes"] == 2 for e in summ["slides"] if e["status"] == "ok")
    net.eval()
    ref = infer_slide(good[0], net, None, patch_size=PATCH, batch_size=16)
    np.testing.assert_allclose(np.load(pred / f"{Path(good[0]).stem}_prob.npy"), ref.prob, atol=1e-5)


def test_multi_gpu_validation_split_shorter_than_processes_is_named():
    check_validation_shorter_than_processes([TRAIN, MULTI_GPU], metadata=METADATA)


def test_multi_gpu_evaluation_split_shorter_than_processes_is_named():
    """multi_gpu_evaluate.json over fewer test patches than processes: the validation evaluator's and the robustness
    loader's samplers refuse it naming the split and both numbers."""
    p = config_parser([TRAIN, EVALUATE, MULTI_GPU_EVAL], metadata=METADATA)
    assert p.get_parsed_content("robustness")["distributed"] is True
    for key, dataset in (("validate#sampler", "validate#dataset"), ("robustness_data#sampler", "robustness_data#dataset")):
        p[dataset] = "$[0]"
        check_sampler_refuses_a_short_split(p, key, "test")


def _multi_gpu_evaluate_vs_one_process(tmp_path: Path, data: Path, data_args: list[str]) -> tuple[Path, Path, str]:
    """evaluate.json in one process and train.json + evaluate.json + multi_gpu_evaluate.json under torchrun (2 gloo
    processes) with the same random-weight checkpoint: metrics.json's metrics and the robustness report agree within
    1e-5, the sharded run wrote the same file names, one TensorBoard file, one report and summary (rank 0).
    Returns the two output folders and the torchrun log."""
    net = config_parser([INFERENCE], network_def=TINY_NET, output_dir=str(tmp_path), metadata=METADATA).get_parsed_content("network_def")
    ckpt = tmp_path / "model.pt"
    torch.save({"model": net.state_dict()}, ckpt)
    args = [*data_args, "--ckpt_path", str(ckpt), "--robustness_angles", "[0, 45, 90]", "--val_batch_size", "2"]
    one, two = tmp_path / "one", tmp_path / "two"
    run_bundle([TRAIN, EVALUATE], *_common(data, one), *args, cwd=tmp_path)
    log = run_torchrun_bundle([TRAIN, EVALUATE, MULTI_GPU_EVAL], *_common(data, two), *args, cwd=tmp_path)
    want, got = (json.loads((d / "eval" / "metrics.json").read_text()) for d in (one, two))
    assert got["n_patches"] == want["n_patches"]
    assert sorted(got["metrics"]) == sorted(want["metrics"]) and want["metrics"]
    for k, v in want["metrics"].items():
        assert abs(got["metrics"][k] - v) < 1e-5, (k, got["metrics"][k], v)
    rep_want, rep_got = (json.loads((d / "eval" / "robustness.json").read_text()) for d in (one, two))
    assert rep_got["n_images"] == rep_want["n_images"] == want["n_patches"] and rep_got["settings"]["world_size"] == 2
    check_same_robustness_reports(rep_want, rep_got, ("accuracy", "auc"))
    assert sorted(p.name for p in (two / "eval").iterdir()) == sorted(p.name for p in (one / "eval").iterdir())
    assert len(list((two / "logs").glob("events.out.tfevents.*"))) == 1
    assert log.count("rotation robustness report:") == 1 and log.count("evaluation summary written to") == 1, log[-6000:]
    return one, two, log


def test_multi_gpu_evaluate_gloo_two_processes_matches_one_process(tmp_path):
    """multi_gpu_evaluate.json on CPU (torchrun, 2 gloo processes) over 5 PCam-style test patches of noise, labels
    0, 1, 0, 1, 0 (rank 0 gets the three 0s, rank 1 the two 1s, so a rank's shard alone gives other numbers than the
    whole split whenever the accuracy of the whole is neither 0 nor 1): the validation evaluator and the robustness
    report equal a one-process evaluate.json run."""
    from monai_gmr.data import write_pcam_h5

    rng = np.random.default_rng(1)
    for split, n in (("train", 4), ("valid", 4), ("test", 5)):
        write_pcam_h5(tmp_path / "pcam" / f"camelyonpatch_level_2_split_{split}", rng.integers(0, 255, (n, 48, 48, 3),
                      dtype=np.uint8), np.arange(n) % 2)  # fmt: skip
    pcam = ["--data_source", "pcam", "--pcam_dir", str(tmp_path / "pcam")]
    one, _, _ = _multi_gpu_evaluate_vs_one_process(tmp_path, tmp_path / "no_slides", pcam)
    rep = json.loads((one / "eval" / "robustness.json").read_text())
    assert rep["n_images"] == 5 and all(0.0 < v < 1.0 for v in rep["per_angle"]["accuracy"]), rep["per_angle"]


@pytest.mark.slow
def test_multi_gpu_evaluate_with_slide_inference_gloo_two_processes(tmp_path, slides):
    """multi_gpu_evaluate.json on the synthetic slides (2 gloo processes): the patch metrics as above and the
    sharded slide inference of the test slide writes the one-process maps (rank 0)."""
    one, two, _ = _multi_gpu_evaluate_vs_one_process(tmp_path, Path(slides["root"]), ["--generate_synthetic", "false"])
    want, got = (json.loads((d / "eval" / "metrics.json").read_text()) for d in (one, two))
    assert got["n_patches"] == len(slides["test"]) and got["slides"]["n_ok"] == want["slides"]["n_ok"] == 1
    maps = sorted((one / "eval" / "maps").glob("*.npy"))
    assert maps
    for f in maps:
        np.testing.assert_allclose(np.load(two / "eval" / "maps" / f.name), np.load(f), atol=1e-5)


def test_config_settings_seed_log_interval_num_workers_are_checked_by_name():
    """--seed abc failed inside MONAI's set_determinism ("invalid literal for int()") and --seed 1.5 was truncated;
    --log_interval x and --num_workers two failed with "'<' not supported between 'str' and 'int'"."""
    seed = init_id([TRAIN], "set_determinism", metadata=METADATA)
    check_settings_refused_by_name([TRAIN], metadata=METADATA, cases=[
        ("seed", "abc", seed), ("seed", 1.5, seed), ("log_interval", "x", "train#handlers#3#interval"),
        ("num_workers", "two", "train#dataloader#num_workers"), ("num_workers", -1, "validate#dataloader#num_workers"),
    ])  # fmt: skip
    check_settings_refused_by_name([TRAIN, EVALUATE], metadata=METADATA, cases=[("seed", "abc", "initialize#1")])
    check_settings_refused_by_name([TRAIN, EVALUATE, MULTI_GPU_EVAL], metadata=METADATA, cases=[("seed", 1.5, "initialize#5")])
    check_settings_refused_by_name([TRAIN, MULTI_GPU], metadata=METADATA,
                                   cases=[("seed", 1.5, init_id([TRAIN, MULTI_GPU], "set_determinism", metadata=METADATA))])
    check_settings_refused_by_name([INFERENCE], metadata=METADATA, cases=[("seed", "x", "initialize#1")])
    check_settings_refused_by_name([INFERENCE, MULTI_GPU_INFERENCE], metadata=METADATA, cases=[("seed", "x", "initialize#4")])



def test_config_splits_and_batch_sizes_are_refused_by_setting_name():
    """--eval_split tset / --input_split tset were refused by the dataset functions with "split must be one of ...",
    naming their argument, not the setting; --val_batch_size 0 (and inference's --batch_size 0) was refused by torch
    naming "batch_size"."""
    check_settings_refused_by_name([TRAIN, EVALUATE], metadata=METADATA, cases=[
        ("eval_split", "tset", "validate#dataset#split"), ("eval_split", "tset", "robustness_data#dataset#split"),
        ("eval_split", "tset", "slide_inference#split"), ("val_batch_size", 0, "validate#dataloader#batch_size"),
        ("val_batch_size", 0, "robustness_data#dataloader#batch_size"), ("val_batch_size", 0, "slide_inference#batch_size"),
    ])  # fmt: skip
    check_settings_refused_by_name([TRAIN], metadata=METADATA, cases=[("val_batch_size", 0, "validate#dataloader#batch_size")])
    check_settings_refused_by_name([INFERENCE], metadata=METADATA, cases=[
        ("input_split", "tset", "slide_inference#split"), ("batch_size", 0, "slide_inference#batch_size"),
    ])  # fmt: skip
    assert config_parser([TRAIN, EVALUATE], eval_split="validation", metadata=METADATA).get_parsed_content(
        "validate#dataset#split") == "validation"

def test_config_inference_mode_is_refused_by_its_setting_name():
    """--inference_mode dense was refused by SlideInference with "mode must be one of ('sliding', 'masked'), got
    mode='dense'", naming the function's argument, not the setting; the configs now read it by name (both values
    still pass through)."""
    cases = [("inference_mode", "dense", "slide_inference#mode"), ("inference_mode", "grid", "slide_inference#mode")]
    check_settings_refused_by_name([INFERENCE], metadata=METADATA, cases=cases)
    check_settings_refused_by_name([TRAIN, EVALUATE], metadata=METADATA, cases=cases)
    for files in ([INFERENCE], [TRAIN, EVALUATE]):
        for mode in ("sliding", "masked"):
            p = config_parser(files, inference_mode=mode, metadata=METADATA)
            assert p.get_parsed_content("slide_inference#mode") == mode


def test_config_tumour_class_beyond_num_classes_is_refused_by_name():
    """--tumour_class 2 with 2 classes was found only inside each slide, after its tissue detection: every slide failed
    in turn and an inference_summary.json of failures was left. SlideInference (built before any slide is read)
    now refuses it with num_classes; a class the network has still passes."""
    for files in ([INFERENCE], [TRAIN, EVALUATE]):
        check_settings_refused_by_name(files, metadata=METADATA, cases=[("tumour_class", 2, "slide_inference")])
        p = config_parser(files, tumour_class=2, num_classes=3, metadata=METADATA)
        assert p.get_parsed_content("slide_inference").kwargs["tumour_class"] == 2


def test_config_wsi_backend_is_refused_by_name_before_the_slides():
    """--wsi_backend opneslide failed in MONAI's WSIReader ("The supported backends are cucim, openslide, and
    tifffile but 'opneslide' was given"), naming no setting, when the first slide was opened: after the synthetic
    slides had been generated. The configs read it through check_wsi_backend, with the dataset's arguments."""
    check_settings_refused_by_name([TRAIN], metadata=METADATA, cases=[
        ("wsi_backend", "opneslide", "train#dataset#backend"), ("wsi_backend", "opneslide", "validate#dataset#backend"),
    ])  # fmt: skip
    check_settings_refused_by_name([TRAIN, EVALUATE], metadata=METADATA, cases=[
        ("wsi_backend", "opneslide", "robustness_data#dataset#backend"), ("wsi_backend", "x", "slide_inference#backend"),
    ])  # fmt: skip
    check_settings_refused_by_name([INFERENCE], metadata=METADATA, cases=[("wsi_backend", "x", "slide_inference#backend")])
    assert config_parser([TRAIN], wsi_backend="tifffile", metadata=METADATA).get_parsed_content("train#dataset#backend") == "tifffile"

def test_config_training_settings_are_refused_by_name_before_the_data(tmp_path):
    """--batch_size 0, --learning_rate abc, --epochs 0, --amp maybe, ... were read only when the optimizer, data
    loaders, handlers and trainer were built, after the synthetic data had been generated (6 synthetic slides of 4096 x 4096 pixels by
    default): check_training_settings, right after the setting-name check, now refuses them by name first."""
    check_training_settings_refused_before_the_data(TRAIN, MULTI_GPU, metadata=METADATA, extra=[("val_batch_size", 0)],
                                                     data=tmp_path / "data", output_dir=str(tmp_path / "out"), synthetic=SYNTH, patch_size=PATCH)

def test_config_settings_robustness_are_checked_by_name_before_the_data():
    """WSI evaluation read --robustness_angles / --robustness_flips / --robustness_metrics only when the robustness
    evaluator started, after the validation run over the whole split; initialize now checks them, before the data."""
    check_settings_refused_by_name([TRAIN, EVALUATE], metadata=METADATA, cases=[
        ("robustness_metrics", ["acc"], "initialize#2"),
    ])  # fmt: skip
    check_settings_refused_by_name([TRAIN, EVALUATE, MULTI_GPU_EVAL], metadata=METADATA, cases=[
        ("robustness_metrics", ["acc"], "initialize#6"),
    ])  # fmt: skip
    p = config_parser([TRAIN, EVALUATE], robustness_flips=["x"], metadata=METADATA)
    with pytest.raises(Exception, match="robustness_flips"):
        p.get_parsed_content("initialize#2")
    data = next(i for i, x in enumerate(p["initialize"]) if "len(@validate::dataset)" in x)
    assert "check_robustness_settings" in p["initialize"][2] and data > 2  # the check comes before the data are read


def test_config_setting_patch_size_list_is_refused_by_name():
    """--patch_size "[96, 96]" passed every check and failed in the first training step ("applying transform
    CenterSpatialCropd", the crop size being [[96, 96], [96, 96]]), or in context_size with "int() argument must be
    ... not 'list'": the bundle's patch_size is one int (square patches)."""
    check_settings_refused_by_name([TRAIN], metadata=METADATA, cases=[
        ("patch_size", [96, 96], "train#crop_transforms#0#roi_size"),
        ("patch_size", [96, 96], "train#rotation_transforms#1#roi_size"),
    ])  # fmt: skip
    check_settings_refused_by_name([TRAIN, EVALUATE], metadata=METADATA, cases=[("patch_size", [96, 96], "context_size")])
    p = config_parser([TRAIN], patch_size=48, metadata=METADATA)
    assert p.get_parsed_content("train#crop_transforms#0#roi_size") == [48, 48]


def test_config_tta_settings_are_checked_by_name_in_initialize(tmp_path):
    """--tta_flips "['x']" failed when the inferer was built, naming only RotationTTAInferer's flip ``axis``."""
    for configs, id in (([INFERENCE], "initialize#2"), ([INFERENCE, MULTI_GPU_INFERENCE], "initialize#5"),
                        ([TRAIN, EVALUATE], "initialize#3"), ([TRAIN, EVALUATE, MULTI_GPU_EVAL], "initialize#7")):  # fmt: skip
        p = config_parser(configs, tta_flips=["x"], dataset_dir=str(tmp_path / "data"), output_dir=str(tmp_path / "out"),
                          metadata=METADATA)  # fmt: skip
        with pytest.raises(Exception, match="tta_flips"):
            p.get_parsed_content(id)


def test_config_key_metric_check_takes_no_additional_metrics():
    """``--validate#additional_metrics null`` stopped in the ``best_model_metric`` check of ``initialize``."""
    for configs in ([TRAIN], [TRAIN, MULTI_GPU]):
        check_key_metric_without_additional_metrics(configs, metadata=METADATA, default="val_auc", build=configs == [TRAIN])
