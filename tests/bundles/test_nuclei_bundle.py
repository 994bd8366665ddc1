"""Tests of the gmr_nuclei_segmentation MONAI bundle: configs, end-to-end runs, resume, multi-process, errors.

End-to-end runs use subprocesses exactly like a user (``python -m monai.bundle run ...``) on a tiny synthetic
dataset (64x64 images, a small GMRUNet, a few iterations) so the whole file stays fast on 2 CPU cores.
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
    kill_after_epoch_config,
    no_outputs,
    run_bundle,
    run_torchrun_bundle,
    workflow_error,
)
from tests.conftest import ROOT, shared_path

BUNDLE = ROOT / "bundles" / "gmr_nuclei_segmentation"
CONFIGS = BUNDLE / "configs"
METADATA = str(CONFIGS / "metadata.json")
TRAIN = str(CONFIGS / "train.json")
EVALUATE = str(CONFIGS / "evaluate.json")
INFERENCE = str(CONFIGS / "inference.json")
MULTI_GPU = str(CONFIGS / "multi_gpu_train.json")
MULTI_GPU_INFERENCE = str(CONFIGS / "multi_gpu_inference.json")
MULTI_GPU_EVAL = str(CONFIGS / "multi_gpu_evaluate.json")

TINY_NET = (
    "{'_target_': 'monai_gmr.nets.GMRUNet', 'spatial_dims': 2, 'in_channels': 3, 'out_channels': '@num_classes', "
    "'features': [4, 8, 8, 16], 'kernel_sizes': [5, 5, 3, 3]}"
)
SYNTH = {"n_images": 6, "size": 64, "seed": 0}


def _common(data: Path, out: Path) -> list[str]:
    return [
        "--dataset_dir", str(data), "--output_dir", str(out), "--synthetic", repr(SYNTH), "--roi_size", "[64, 64]",
        "--num_workers", "0", "--network_def", TINY_NET,
    ]  # fmt: skip


TRAIN_ARGS = [
    "--epochs", "2", "--epoch_length", "2", "--val_interval", "1", "--crop_size", "32", "--batch_size", "2",
    "--crops_per_image", "2", "--log_interval", "1",
]  # fmt: skip


# ---------------------------------------------------------------------------------------------------------- configs
def test_configs_parse_and_resolve(tmp_path):
    """Every config parses; the main components resolve (network, loss, optimizer, transforms, inferers)."""
    for f in (TRAIN, EVALUATE, INFERENCE, MULTI_GPU, MULTI_GPU_INFERENCE, MULTI_GPU_EVAL, str(CONFIGS / "metadata.json")):
        json.loads(Path(f).read_text())
    over = {"output_dir": str(tmp_path / "out"), "dataset_dir": str(tmp_path / "data"), "network_def": TINY_NET}
    p = config_parser([TRAIN], **{**over, "network_def": eval(TINY_NET)}, metadata=METADATA)
    assert p.get_parsed_content("bundle_root") == str(BUNDLE)
    net = p.get_parsed_content("network")
    assert type(net).__name__ == "GMRUNet"
    y = net(torch.rand(1, 3, 32, 32))
    assert y.shape == (1, 2, 32, 32)
    for i in ("loss", "optimizer", "lr_scheduler", "train#preprocessing", "validate#preprocessing",
              "validate#postprocessing", "validate#inferer", "train#inferer"):
        assert p.get_parsed_content(i) is not None, i
    # the default network is the GMR U-Net with the paper's widths and kernels
    p0 = config_parser([TRAIN], output_dir=str(tmp_path / "out"), metadata=METADATA)
    gmr = p0.get_parsed_content("network_def")
    assert type(gmr).__name__ == "GMRUNet"
    assert [m.kernel_size for m in gmr.modules() if type(m).__name__ == "GMRConv"][:2] == [9, 9]
    assert p0.get_parsed_content("augment_rotation") is False and p0.get_parsed_content("resume") is False
    # swapping the network by its target alone (the README's baseline command) builds a plain MONAI BasicUNet
    pb = config_parser([TRAIN], output_dir=str(tmp_path / "out"), metadata=METADATA,
                       **{"network_def#_target_": "monai.networks.nets.BasicUNet"})  # fmt: skip
    basic = pb.get_parsed_content("network_def")
    assert type(basic).__name__ == "BasicUNet" and basic(torch.rand(1, 3, 32, 32)).shape == (1, 2, 32, 32)

    pe = config_parser([TRAIN, EVALUATE], **{**over, "network_def": eval(TINY_NET), "tta": True}, metadata=METADATA)
    assert type(pe.get_parsed_content("validate#inferer")).__name__ == "RotationTTAInferer"
    rob = pe.get_parsed_content("robustness")
    assert len(rob["angles"]) == 36 and rob["flips"] == ["h", "v"]
    pi = config_parser([INFERENCE], **{**over, "network_def": eval(TINY_NET)}, metadata=METADATA)
    for i in ("network", "preprocessing", "postprocessing", "inferer"):
        assert pi.get_parsed_content(i) is not None, i
    pm = config_parser([TRAIN, MULTI_GPU], metadata=METADATA)
    assert pm.get("network")["_target_"] == "torch.nn.parallel.DistributedDataParallel"
    assert pm.get("train#dataloader#shuffle") is False
    pme = config_parser([TRAIN, EVALUATE, MULTI_GPU_EVAL], metadata=METADATA)
    assert pme.get_parsed_content("robustness")["distributed"] is True
    assert pme.get("validate#dataloader#sampler").replace("::", "#") == "@validate#sampler" and pme.get("finalize")


@pytest.mark.parametrize("text", ["false", "true"])
def test_switches_given_as_text_mean_what_they_say(tmp_path, text):
    """``--amp false`` / ``--tta true`` arrive as the strings "false" / "true" (Python Fire makes only ``False`` /
    ``True`` booleans); a bare non-empty string is true, so "false" used to switch augmentation, TTA, instance
    metrics and AMP on."""
    on = text == "true"
    over = {"output_dir": str(tmp_path / "out"), "dataset_dir": str(tmp_path / "data"), "synthetic": SYNTH,
            "network_def": eval(TINY_NET), "generate_synthetic": "yes"}  # fmt: skip
    switches = {k: text for k in ("amp", "tta", "augment_rotation", "instance_metrics", "compile")}
    p = config_parser([TRAIN, EVALUATE], **over, **switches, metadata=METADATA)
    names = [type(t).__name__ for t in p.get_parsed_content("train#preprocessing").transforms]
    assert ("RandRotated" in names) is on
    assert (type(p.get_parsed_content("validate#inferer")).__name__ == "RotationTTAInferer") is on
    assert ("aji" in p.get_parsed_content("robustness_metrics")) is on
    assert p.get_parsed_content("robustness#amp") is on and p.get_parsed_content("validate#evaluator").amp is on
    assert p.get_parsed_content("validate#evaluator").compile is on and p.get_parsed_content("train#trainer").compile is on
    # the robustness evaluator (not a MONAI engine) runs the compiled network too; the checkpoint loads into @network
    net, rob_net = p.get_parsed_content("network"), p.get_parsed_content("robustness_evaluator").network
    assert type(net).__name__ == "GMRUNet" and (rob_net is net) is not on
    assert not on or (type(rob_net).__name__ == "CompiledModule" and rob_net.module is net)
    pi = config_parser([INFERENCE], **over, **switches, metadata=METADATA)
    assert (type(pi.get_parsed_content("inferer")).__name__ == "RotationTTAInferer") is on
    assert pi.get_parsed_content("evaluator").amp is on and pi.get_parsed_content("evaluator").compile is on
    check_switches_read_as_bool(CONFIGS)


def test_best_checkpoint_keeps_the_latest_of_equal_scores(tmp_path):
    """``model.pt`` follows the latest epoch among those with the best validation score (key_metric_greater_or_equal)."""
    out = tmp_path / "out"
    p = config_parser([TRAIN], output_dir=str(out), dataset_dir=str(tmp_path / "data"), network_def=eval(TINY_NET),
                      metadata=METADATA)  # fmt: skip
    check_best_saver_keeps_the_latest_tie(p, out / "models")


def _write_pair(folder: Path, name: str, size=(40, 48), label_size=None) -> dict[str, str]:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
    lab = np.zeros(label_size or size, np.uint16)
    lab[5:15, 5:15] = 1
    lab[20:30, 10:20] = 2
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(folder / f"{name}.png")
    Image.fromarray(lab).save(folder / f"{name}_label.png")
    return {"image": str(folder / f"{name}.png"), "label": str(folder / f"{name}_label.png")}


@pytest.mark.parametrize("augment", [False, True])
def test_train_transforms_crop_and_augmentation_switch(tmp_path, augment):
    item = _write_pair(tmp_path, "a", size=(72, 80))
    p = config_parser([TRAIN], output_dir=str(tmp_path / "o"), crop_size=32, crops_per_image=3, augment_rotation=augment, metadata=METADATA)
    pre = p.get_parsed_content("train#preprocessing")
    names = [type(t).__name__ for t in pre.transforms]
    assert ("RandRotated" in names) is augment and ("RandRotate90d" in names) is augment
    assert ("RandFlipd" in names) is augment
    out = pre(item)
    assert len(out) == 3
    for d in out:
        assert d["image"].shape == (3, 32, 32) and d["label"].shape == (1, 32, 32)
        assert set(torch.unique(d["label"]).tolist()) <= {0.0, 1.0}
        assert -0.2 <= float(d["image"].min()) and float(d["image"].max()) <= 1.5  # [0, 1] +- intensity jitter
    val = p.get_parsed_content("validate#preprocessing")(item)
    assert val["image"].shape == (3, 80, 72)  # whole tile (MONAI PIL reader: spatial dims are (W, H))
    p3 = config_parser([TRAIN], output_dir=str(tmp_path / "o"), num_classes=3, metadata=METADATA)
    lab3 = p3.get_parsed_content("validate#preprocessing")(item)["label"]
    assert set(torch.unique(lab3).tolist()) == {0.0, 1.0, 2.0}


@pytest.mark.parametrize("num_classes", [2, 3])
def test_inference_masks_have_the_foreground_validation_scores(tmp_path, num_classes):
    """inference.json's semantic/instance masks and probability map agree with validation's foreground
    (merge_foreground + argmax) also with a boundary class: (0.4, 0.3, 0.3) is a nucleus pixel."""
    torch.manual_seed(0)
    logits = 3 * torch.randn(num_classes, 24, 40)
    logits[:, :4, :4] = torch.tensor([0.4, 0.3, 0.3][:num_classes]).log().reshape(-1, 1, 1)
    over = dict(output_dir=str(tmp_path / "o"), num_classes=num_classes, metadata=METADATA)
    post = config_parser([INFERENCE], **over).get_parsed_content("postprocessing")
    steps = list(post.transforms)
    steps = steps[: next(i for i, t in enumerate(steps) if type(t).__name__ == "SaveImaged")]
    d = {"pred": logits.clone(), "image": torch.zeros(3, 24, 40)}
    for t in steps:
        d = t(d)
    val = config_parser([TRAIN], **over).get_parsed_content("validate#postprocessing")
    fg = val({"pred": logits.clone(), "label": torch.zeros(1, 24, 40)})["pred"][1] > 0.5
    assert fg.any() and (~fg).any()
    torch.testing.assert_close(d["pred"][0] > 0, fg)
    torch.testing.assert_close(d["prob"][0] > 0.5, fg)
    assert bool(d["pred"][0, 0, 0] > 0) is (num_classes == 3)
    assert ((torch.as_tensor(d["instance"][0]) > 0) <= fg).all()


def test_evaluation_scores_the_instances_inference_writes(tmp_path):
    """evaluate.json's AJI/PQ use inference.json's instance settings and the unmerged class map."""
    over = dict(output_dir=str(tmp_path / "o"), metadata=METADATA)
    ev = config_parser([TRAIN, EVALUATE], **over)
    inf = config_parser([INFERENCE], **over)
    for key in ("instance_method", "min_nucleus_size"):
        assert ev.get_parsed_content(key) == inf.get_parsed_content(key), key
    rob = ev.get_parsed_content("robustness")
    assert rob["merge_foreground"] is True
    assert rob["instance_kwargs"] == {"method": inf.get_parsed_content("instance_method"),
                                      "min_size": inf.get_parsed_content("min_nucleus_size"), "connectivity": 1}
    step = next(t for t in inf.get_parsed_content("postprocessing").transforms if type(t).__name__ == "InstanceMaskd")
    assert step.kwargs["connectivity"] == 1 and step.kwargs["min_size"] == rob["instance_kwargs"]["min_size"]



@pytest.mark.parametrize("binary", [1, 255])
def test_instance_metrics_read_a_binary_label_as_its_connected_components(tmp_path, binary):
    """With a binary label (a user's datalist; NucleiLabeld takes them for training) AJI/PQ scored every tile against
    one ground-truth "nucleus" (all foreground pixels) without a word. The evaluation's ground-truth instances are
    now its 8-connected components (as prepare_nuclei reads binary masks); instance-id labels are kept as they are."""
    from monai_gmr.workflows.nuclei import instance_ids

    item = _write_pair(tmp_path, "a", size=(40, 48))
    lab = np.array(Image.open(item["label"]))
    Image.fromarray(((lab > 0) * binary).astype(np.uint8)).save(tmp_path / "binary.png")
    p = config_parser([TRAIN, EVALUATE], output_dir=str(tmp_path / "o"), instance_metrics=True, metadata=METADATA)
    tf = p.get_parsed_content("robustness_transforms")
    got = tf({**item, "label": str(tmp_path / "binary.png")})["gt_instances"]
    want = tf(item)["gt_instances"]  # the instance ids 1, 2
    assert sorted(torch.unique(torch.as_tensor(want)).tolist()) == [0, 1, 2]
    torch.testing.assert_close(torch.as_tensor(got).float(), torch.as_tensor(want).float())
    ids = torch.tensor([[[0, 3, 3], [0, 0, 7]]])
    assert instance_ids(ids) is ids

def test_evaluation_report_names_the_split_it_scored(tmp_path, nuclei_data):
    """A dataset without a test split is evaluated on its validation split (a warning says so); metrics.json said
    ``"split": "test"`` all the same, so the report claimed test numbers for the validation images."""
    import shutil

    data, out = tmp_path / "data", tmp_path / "out"
    shutil.copytree(nuclei_data, data)
    dl = json.loads((data / "datalist.json").read_text())
    del dl["test"]
    (data / "datalist.json").write_text(json.dumps(dl))
    net = config_parser([INFERENCE], output_dir=str(out), network_def=eval(TINY_NET),
                        metadata=METADATA).get_parsed_content("network_def")  # fmt: skip
    (out / "models").mkdir(parents=True)
    torch.save(net.state_dict(), out / "models" / "model.pt")
    run_bundle([TRAIN, EVALUATE], *_common(data, out), "--generate_synthetic", "false", "--robustness_angles", "[0]",
               "--robustness_flips", "[]", cwd=tmp_path)  # fmt: skip
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert metrics["split"] == "validation" and metrics["n_images"] == len(dl["validation"]), metrics


# ---------------------------------------------------------------------------------------------------------- metadata

@pytest.mark.parametrize("config, workflow_type", [(TRAIN, "train"), (INFERENCE, "infer")])
def test_monai_bundle_properties(tmp_path, config, workflow_type):
    from monai_gmr.data import ensure_nuclei_dataset

    data = tmp_path / "data"
    ensure_nuclei_dataset(str(data), generate=True, **SYNTH)
    check_monai_properties(config, METADATA, workflow_type, dataset_dir=str(data), output_dir=str(tmp_path / "out"),
                           num_workers=0)  # fmt: skip


def test_metadata_value_ranges_hold_for_the_network_outputs(tmp_path):
    """network_data_format is truthful: the network outputs logits (outside [0, 1]), so ``outputs.pred`` declares
    no range; the class map of the post-processing is in the declared range."""
    from monai_gmr.workflows.nuclei import nucleus_class_map

    meta = json.loads(Path(METADATA).read_text())["network_data_format"]
    spec_in, pred = meta["inputs"]["image"], meta["outputs"]["pred"]
    torch.manual_seed(0)
    net = config_parser([INFERENCE], output_dir=str(tmp_path), network_def=eval(TINY_NET),
                        metadata=METADATA).get_parsed_content("network_def").eval()  # fmt: skip
    lo, hi = spec_in["value_range"]
    with torch.no_grad():
        logits = net(lo + (hi - lo) * torch.rand(1, spec_in["num_channels"], 64, 64))
    check_logits_metadata(logits, pred)
    post = meta["post_processed_outputs"]["pred"]
    cls = nucleus_class_map(torch.softmax(logits[0], 0))
    assert post["num_channels"] == cls.shape[0] == 1
    assert post["value_range"][0] <= float(cls.min()) and float(cls.max()) <= post["value_range"][1]


def test_verify_metadata_offline(tmp_path):
    from monai.bundle import verify_metadata

    schema = shared_path("monai", "meta_schema_20240725.json")
    verify_metadata(meta_file=str(CONFIGS / "metadata.json"), filepath=str(schema), hash_val="06954cad2cc5d3784e72077ac76f0fc8")
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    assert meta["required_packages_version"]["monai_gmr"] == "0.1.0"
    assert "optional_packages_version" not in meta  # MONAI 1.6 would overwrite the required list with it


def test_verify_net_in_out():
    from monai.bundle import verify_net_in_out

    verify_net_in_out(net_id="network_def", meta_file=str(CONFIGS / "metadata.json"), config_file=INFERENCE, device="cpu")
    with pytest.raises(ValueError, match="output channel"):
        verify_net_in_out(net_id="network_def", meta_file=str(CONFIGS / "metadata.json"), config_file=INFERENCE,
                          device="cpu", num_classes=3)


# ---------------------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def eager_training(tmp_path_factory) -> dict:
    """One eager training run (``TRAIN_ARGS``, generating its synthetic data, from another working directory), shared
    by the end-to-end test and the compiled-training comparison (one bundle subprocess less). What the run left is
    recorded here right after it: the end-to-end test goes on to write ``eval/`` and ``pred/`` into ``out``, so other
    users read only the recorded training outputs (``summary``, ``log``, ``models``)."""
    root = tmp_path_factory.mktemp("nuclei_eager_training")
    data, out = root / "data", root / "run"
    cwd = root / "elsewhere"  # any working directory
    cwd.mkdir()
    proc = run_bundle([TRAIN], *_common(data, out), *TRAIN_ARGS, cwd=cwd)
    return {
        "data": data, "out": out, "cwd": cwd, "log": proc.stdout + proc.stderr,
        "summary": json.loads((out / "train_summary.json").read_text()),
        "models": sorted(p.name for p in (out / "models").iterdir()),
    }  # fmt: skip


def test_train_evaluate_infer_end_to_end(eager_training):
    data, out, cwd = eager_training["data"], eager_training["out"], eager_training["cwd"]
    assert "synthetic" in eager_training["log"].lower()  # the generation is logged
    models = out / "models"
    assert "model.pt" in eager_training["models"] and (models / "model.pt").is_file()
    assert {p for p in eager_training["models"] if p.startswith("checkpoint_epoch=") and p.endswith(".pt")} == {
        "checkpoint_epoch=1.pt", "checkpoint_epoch=2.pt"}
    summary = eager_training["summary"]
    assert summary["epochs_completed"] == 2 and summary["iterations_completed"] == 4 and not summary["resumed"]
    assert 0.0 <= summary["best_metric"] <= 1.0 and np.isfinite(summary["final_loss"])
    assert list((out / "logs").glob("events.out.tfevents.*"))  # TensorBoard scalars + images

    # evaluation: 0/90/180/270 degrees are exact for GMRUNet on 64x64 tiles (one sliding window)
    angles = "[0, 45, 90, 180, 270]"
    run_bundle([TRAIN, EVALUATE], *_common(data, out), "--robustness_angles", angles, "--instance_metrics", "true", cwd=cwd)
    ev = out / "eval"
    for f in ("robustness.json", "robustness.csv", "robustness_polar.png", "metrics.json"):
        assert (ev / f).is_file() and (ev / f).stat().st_size > 0, f
    rep = json.loads((ev / "robustness.json").read_text())
    assert rep["angles"] == [0, 45, 90, 180, 270] and sorted(rep["per_flip"]) == ["h", "v"]
    for m in ("dice", "iou", "auc", "aji", "pq"):  # instance metrics from the instance maps (--instance_metrics)
        vals = rep["per_angle"][m]
        assert all(v is not None and 0.0 <= v <= 1.0 for v in vals), (m, vals)
        for i in (2, 3, 4):  # exact equivariance of the GMR U-Net => identical metrics at right angles
            assert abs(vals[i] - vals[0]) < 1e-4, (m, vals)
        for f in ("h", "v"):
            assert abs(rep["per_flip"][f][m] - vals[0]) < 1e-4, (m, f)
    metrics = json.loads((ev / "metrics.json").read_text())
    assert abs(metrics["metrics"]["val_mean_dice"] - rep["per_angle"]["dice"][0]) < 0.05
    assert metrics["robustness"]["summary"]["dice"]["std"] >= 0.0
    csv_lines = (ev / "robustness.csv").read_text().splitlines()
    assert csv_lines[0].startswith("model,view,kind,angle,flip") and len(csv_lines) >= 1 + 5 + 2

    # inference writes semantic, instance and probability maps with the input's size
    pred = out / "pred"
    proc = run_bundle([INFERENCE], *_common(data, out), "--pred_dir", str(pred), cwd=cwd)
    segs = sorted(pred.glob("*_seg.png"))
    assert segs, list(pred.iterdir()) if pred.exists() else "no pred dir"
    # the run says what it wrote and where (it ended on ignite's "Engine run finished")
    n = len(segs)
    assert f"inference wrote {n} *_seg.png, {n} *_instance.png, {n} *_prob.tif for {n} image(s) to {pred.resolve()}" \
        in proc.stdout + proc.stderr
    import tifffile

    for seg in segs:
        stem = seg.name[: -len("_seg.png")]
        src = next(data.rglob(f"{stem}.png"))
        size = Image.open(src).size
        s, inst = Image.open(seg), Image.open(pred / f"{stem}_instance.png")
        prob = tifffile.imread(pred / f"{stem}_prob.tif")
        assert s.size == size and inst.size == size and prob.shape == (size[1], size[0])
        sa, ia = np.array(s), np.array(inst)
        assert set(np.unique(sa)) <= {0, 1} and prob.dtype == np.float32
        assert 0.0 <= prob.min() and prob.max() <= 1.0
        np.testing.assert_array_equal(sa > 0, prob > 0.5)  # argmax of 2 classes == p(nucleus) > 0.5
        assert ((ia > 0) <= (sa > 0)).all()  # instances only inside the semantic foreground
    assert not [p for p in pred.iterdir() if p.name.startswith(".")]  # no temporary files left
    # the metadata describes every output inference writes, under the names it writes them
    ppo = json.loads((BUNDLE / "configs" / "metadata.json").read_text())["network_data_format"]["post_processed_outputs"]
    written = {"pred": ("_seg.png", sa), "instance": ("_instance.png", ia), "prob": ("_prob.tif", prob)}
    assert sorted(ppo) == sorted(written)
    for key, (postfix, arr) in written.items():
        assert postfix in ppo[key]["channel_def"]["0"] and str(arr.dtype) in ppo[key]["channel_def"]["0"], key


def test_rotated_validation_during_training(tmp_path):
    """``--val_rotation true``: every validation also scores the validation tiles rotated and flipped
    (RotationRobustnessHandler with the validation's sliding window and reflection padding), logged and written to
    TensorBoard as ``val_rotation_dice_{mean,std,min}`` and per-angle curves. Right angles and a flip of a 64 x 64
    tile (one window) are exact for GMRUNet, so the rotated Dice is the validation Dice of the same epoch."""
    data, out = tmp_path / "data", tmp_path / "out"
    proc = run_bundle([TRAIN], *_common(data, out), *TRAIN_ARGS, *EXACT_VIEWS, cwd=tmp_path)
    check_rotated_validation(proc.stdout + proc.stderr, out / "logs", {"val_mean_dice": "dice"}, epochs=2)


def test_config_rotated_validation_settings_are_refused_by_name():
    bad = [("val_rotation_angles", []), ("val_rotation_flips", ["x"]), ("val_rotation_metrics", ["aji"]),
           ("val_rotation_metrics", ["accuracy"])]  # fmt: skip
    for configs in ([TRAIN], [TRAIN, MULTI_GPU]):
        check_rotated_validation_settings_refused(configs, metadata=METADATA, bad=bad)


def test_config_key_metric_defaults_to_the_configured_key_metric(tmp_path):
    """A renamed or replaced ``validate#key_metric`` (MONAI's ``val_key_metric`` property) was refused before any
    data (``best_model_metric`` still said 'val_mean_dice'): it keyed the evaluator before ``--best_model_metric`` existed."""
    over = {"output_dir": str(tmp_path / "out"), "dataset_dir": str(tmp_path / "data"), "synthetic": SYNTH,
            "roi_size": [64, 64]}  # fmt: skip
    for configs in ([TRAIN], [TRAIN, MULTI_GPU]):
        check_key_metric_follows_the_configured_key_metric(configs, metadata=METADATA, default="val_mean_dice",
                                                           build=configs == [TRAIN], **over)  # fmt: skip


def test_config_key_metric_setting_is_refused_by_name():
    """``--best_model_metric``: a metric the run does not compute, or a rotated one without the rotated validation, was
    found only after the data were cached (when the evaluator was built); a spread (``_std``) cannot rank models."""
    rotated = {"val_rotation": True}
    bad = [("val_dice", {}), ("val_rotation_dice_min", {}), ("val_rotation_dice_std", rotated),
           ("val_rotation_iou_min", rotated), ("val_rotation_aji_min", rotated), (["val_mean_dice"], {})]  # fmt: skip
    for configs in ([TRAIN], [TRAIN, MULTI_GPU]):
        check_key_metric_setting_refused(configs, metadata=METADATA, rotated="val_rotation_dice_min", bad=bad)


def test_evaluation_ignores_the_rotated_validation_switch(nuclei_data, tmp_path):
    """``--val_rotation true`` carried into an evaluation (the training's command line or ``--args_file``): the
    evaluator ran the rotated validation of the test tiles at the training's angles besides the robustness report (an
    evaluation pass per angle) and metrics.json got ``val_rotation_*`` entries, which multi_gpu_evaluate.json left
    out; evaluate.json has no rotated validation (its robustness report is the rotated evaluation)."""
    over = _tiny_train(nuclei_data, tmp_path / "out", val_rotation=True)
    assert config_parser([TRAIN, EVALUATE], **over, metadata=METADATA).get_parsed_content("validate#rotation_handlers") == []
    got = config_parser([TRAIN], **over, metadata=METADATA).get_parsed_content("validate#rotation_handlers")
    assert [type(h).__name__ for h in got] == ["RotationRobustnessHandler"]  # training keeps it
    # --best_model_metric of the training: the evaluation's key metric stays its plain Dice (metrics.json, no rotation)
    over["best_model_metric"] = "val_rotation_dice_min"
    key, additional, handlers = config_parser([TRAIN, EVALUATE], **over, metadata=METADATA).get_parsed_content("validate#metric_choice")
    assert list(key) == ["val_mean_dice"] and list(additional) == ["val_mean_iou"] and handlers == []
    key, additional, handlers = config_parser([TRAIN], **over, metadata=METADATA).get_parsed_content("validate#metric_choice")
    assert [type(m).__name__ for m in key.values()] == ["RotationRobustnessMetric"] and list(key) == ["val_rotation_dice_min"]
    assert sorted(additional) == ["val_mean_dice", "val_mean_iou"] and handlers == []  # the metric runs the rotation


def test_compiled_training_matches_eager_and_saves_uncompiled_checkpoints(tmp_path, eager_training):
    """``--compile true`` (backend from ``--compile_kwargs``; aot_eager: no C compiler, a few seconds) trains the same
    as the eager run (the shared ``eager_training``: same settings, same generated data); the checkpoints hold the
    uncompiled network's state (no ``_orig_mod.`` prefix) and load into it with strict=True. (Inductor, the default
    backend, spends about a minute compiling the tiny U-Net on 2 CPU cores.)"""
    data = eager_training["data"]  # the eager run's data (read only)
    runs = {"eager": eager_training["summary"]}
    out = tmp_path / "compiled"
    run_bundle([TRAIN], *_common(data, out), *TRAIN_ARGS, "--compile", "true", "--compile_kwargs",
               "{'backend': 'aot_eager'}", cwd=tmp_path)  # fmt: skip
    runs["compiled"] = json.loads((out / "train_summary.json").read_text())
    for key in ("final_loss", "best_metric"):
        assert abs(runs["compiled"][key] - runs["eager"][key]) < 1e-4 * max(1.0, abs(runs["eager"][key])), (key, runs)
    net = config_parser([TRAIN], network_def=eval(TINY_NET), metadata=METADATA).get_parsed_content("network_def")
    models = tmp_path / "compiled" / "models"
    for state in (torch.load(models / "model.pt", weights_only=True),
                  torch.load(models / "checkpoint_epoch=2.pt", weights_only=True)["model"]):  # fmt: skip
        assert not [k for k in state if "_orig_mod" in k]
        net.load_state_dict(state, strict=True)


@pytest.mark.slow
def test_compiled_evaluation_and_inference_match_eager(tmp_path):
    """evaluate.json (its engine and the robustness evaluator, which is not a MONAI engine) and inference.json with
    ``--compile true`` (aot_eager) give the eager runs' metrics and probability maps (slow: 4 bundle runs; the
    compile wiring of both configs is checked in the fast test of the switches)."""
    import tifffile

    data, out = tmp_path / "data", tmp_path / "trained"
    run_bundle([TRAIN], *_common(data, out), *TRAIN_ARGS, cwd=tmp_path)  # a trained model: Dice defined, maps not flat
    compiled = ["--compile", "true", "--compile_kwargs", "{'backend': 'aot_eager'}"]
    reports, probs = {}, {}
    for name, extra in (("eager", []), ("compiled", compiled)):
        proc = run_bundle([TRAIN, EVALUATE], *_common(data, out), "--robustness_angles", "[0, 90]", "--eval_dir",
                          str(tmp_path / f"eval_{name}"), *extra, cwd=tmp_path)  # fmt: skip
        # the robustness evaluator (not a MONAI engine) runs the compiled network too
        assert ("GMRUNet through torch.compile(backend='aot_eager')" in proc.stdout + proc.stderr) is (name == "compiled")
        reports[name] = json.loads((tmp_path / f"eval_{name}" / "robustness.json").read_text())["per_angle"]["dice"]
        pred = tmp_path / f"pred_{name}"
        run_bundle([INFERENCE], *_common(data, out), "--pred_dir", str(pred), *extra, cwd=tmp_path)
        probs[name] = {p.name: tifffile.imread(p) for p in sorted(pred.glob("*_prob.tif"))}
    assert np.allclose(reports["compiled"], reports["eager"], atol=1e-5), reports
    assert probs["eager"] and sorted(probs["compiled"]) == sorted(probs["eager"])
    for f, p in probs["eager"].items():
        np.testing.assert_allclose(probs["compiled"][f], p, atol=1e-5, err_msg=f)


def test_resume_after_kill(tmp_path):
    """Kill (SIGKILL) training right after the first checkpoint; ``--resume true`` continues from epoch 1."""
    data, out = tmp_path / "data", tmp_path / "run"
    args = [*_common(data, out), *TRAIN_ARGS, "--epochs", "3", "--val_interval", "2"]
    check_kill_and_resume(TRAIN, args, out, tmp_path)


def test_resumed_run_remembers_the_best_validation_before_the_kill(tmp_path):
    """Validation every epoch, SIGKILL after epoch 2, resume to 4: the run summary names the best epoch of the whole
    run (the evaluator's best travels in the checkpoint), the same one ``model.pt`` was chosen by."""
    import re
    import signal

    data, out = tmp_path / "data", tmp_path / "run"
    args = [*_common(data, out), *TRAIN_ARGS, "--epochs", "4", "--val_interval", "1"]
    kill = kill_after_epoch_config(tmp_path, 2)
    first = run_bundle([TRAIN, str(kill)], *args, cwd=tmp_path, check=False)
    assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
    saved = torch.load(out / "models" / "checkpoint_epoch=2.pt", map_location="cpu", weights_only=False)
    assert "best_metric" in saved["best_metric_state"]
    second = run_bundle([TRAIN], *args, "--resume", "true", cwd=tmp_path)
    scores = {}
    for log in (first, second):
        for e, v in re.findall(r"Epoch\[(\d+)\] Metrics -- val_mean_dice: ([0-9.]+)", log.stdout + log.stderr):
            scores[int(e)] = float(v)
    assert sorted(scores) == [1, 2, 3, 4]
    best = max(scores.values())
    best_epoch = max(e for e, v in scores.items() if v == best)  # the latest of equal scores
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["resumed"] is True
    assert summary["best_metric"] == pytest.approx(best, abs=1e-4) and summary["best_metric_epoch"] == best_epoch


@pytest.mark.slow  # three bundle trainings; the refusal itself is unit-tested in tests/workflows/test_key_metric.py
def test_key_metric_chooses_the_best_model_and_a_resume_keeps_it(tmp_path):
    """``--best_model_metric val_mean_iou`` end to end: the evaluator's key metric, model.pt's .json and the run summary
    name it; ``--resume true`` without it (the default Dice) is refused naming the checkpoint and the metric to
    resume with, and with it the run continues."""
    data, out = tmp_path / "data", tmp_path / "run"
    args = [*_common(data, out), *TRAIN_ARGS]
    log = run_bundle([TRAIN], *args, "--best_model_metric", "val_mean_iou", cwd=tmp_path)
    assert "Key metric: val_mean_iou best value" in log.stdout + log.stderr
    assert json.loads((out / "models" / "model.pt.json").read_text())["key_metric"] == "val_mean_iou"
    assert json.loads((out / "train_summary.json").read_text())["key_metric_name"] == "val_mean_iou"
    refused = run_bundle([TRAIN], *args, "--epochs", "3", "--resume", "true", cwd=tmp_path, check=False)
    text = refused.stdout + refused.stderr
    assert refused.returncode != 0 and "cannot resume from" in text, text[-3000:]
    assert "this run by 'val_mean_dice' (best_model_metric)" in text and "resume with best_model_metric='val_mean_iou'" in text
    run_bundle([TRAIN], *args, "--epochs", "3", "--resume", "true", "--best_model_metric", "val_mean_iou", cwd=tmp_path)
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["resumed"] is True and summary["epochs_completed"] == 3 and summary["key_metric_name"] == "val_mean_iou"


def test_multi_gpu_train_seeds_augmentations_per_rank(monkeypatch):
    check_multi_gpu_seeds_per_rank(TRAIN, MULTI_GPU, metadata=METADATA, monkeypatch=monkeypatch)


def test_multi_gpu_train_gloo_two_processes(tmp_path):
    """multi_gpu_train.json on CPU: torchrun, 2 processes, gloo backend, DDP + DistributedSampler.

    (10 images so that the validation split has at least one image per rank, which MONAI's
    ``DistributedSampler(even_divisible=False)`` requires.)
    """
    data, out = tmp_path / "data", tmp_path / "run"
    cfg = f"['{TRAIN}','{MULTI_GPU}']"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "monai.bundle", "run",
        "--config_file", cfg, *_common(data, out), "--synthetic", repr({**SYNTH, "n_images": 10}),
        "--epochs", "2", "--val_interval", "1",
        "--crop_size", "32", "--batch_size", "2", "--crops_per_image", "2", "--log_interval", "1", *EXACT_VIEWS,
        "--best_model_metric", "val_rotation_dice_min",
    ]  # fmt: skip
    env = bundle_env()
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["epochs_completed"] == 2
    # the training split is sharded by DistributedSampler: each rank sees ceil(n_train / 2) images per epoch
    from monai_gmr.workflows.nuclei import nuclei_datalist

    n_train = len(nuclei_datalist(data, "training", generate=False, check=False))
    assert summary["iterations_completed"] == 2 * int(np.ceil(np.ceil(n_train / 2) / 2))
    ck = torch.load(out / "models" / "checkpoint_epoch=2.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in ck["model"])  # DDP unwrapped: loadable by a plain network
    assert (out / "models" / "model.pt").is_file()
    # the rotated validation merged over both shards equals the validation Dice (all-gathered by MONAI); it is the
    # key metric (--best_model_metric), run once per validation by every process (check_rotated_validation counts)
    check_rotated_validation(log, out / "logs", {"val_mean_dice": "dice"}, epochs=2)
    assert summary["key_metric_name"] == "val_rotation_dice_min" and "Got new best metric of val_rotation_dice_min" in log
    assert json.loads((out / "models" / "model.pt.json").read_text())["key_metric"] == "val_rotation_dice_min"


def test_multi_gpu_evaluate_gloo_two_processes_matches_one_process(tmp_path):
    """multi_gpu_evaluate.json on CPU: torchrun, 2 processes, gloo, 3 test images (2 + 1 per rank): metrics.json
    (the validation evaluator's all-gathered Dice/IoU and the robustness summary) and the robustness report with
    instance metrics (their own data loader) equal a one-process evaluate.json run of the same checkpoint, and the
    report, summary and TensorBoard events are written once, by rank 0."""
    data = tmp_path / "data"
    synth = repr({**SYNTH, "n_images": 13})  # test split: 3 images
    net = config_parser([INFERENCE], network_def=eval(TINY_NET), metadata=METADATA).get_parsed_content("network_def")
    ckpt = tmp_path / "model.pt"
    torch.save(net.state_dict(), ckpt)
    args = ["--synthetic", synth, "--ckpt_path", str(ckpt), "--robustness_angles", "[0, 45, 90]", "--instance_metrics", "true"]
    one, two = tmp_path / "one", tmp_path / "two"
    run_bundle([TRAIN, EVALUATE], *_common(data, one), *args, cwd=tmp_path)  # generates the data first
    log = run_torchrun_bundle([TRAIN, EVALUATE, MULTI_GPU_EVAL], *_common(data, two), *args, cwd=tmp_path)
    want, got = (json.loads((d / "eval" / "metrics.json").read_text()) for d in (one, two))
    assert got["n_images"] == want["n_images"] == 3 and got["split"] == "test"
    assert sorted(got["metrics"]) == sorted(want["metrics"]) == ["val_mean_dice", "val_mean_iou"]
    for k, v in want["metrics"].items():
        assert abs(got["metrics"][k] - v) < 1e-5, (k, got["metrics"][k], v)
    assert got["robustness"]["n_images"] == 3
    rep_want, rep_got = (json.loads((d / "eval" / "robustness.json").read_text()) for d in (one, two))
    assert rep_got["n_images"] == 3 and rep_got["settings"]["world_size"] == 2
    check_same_robustness_reports(rep_want, rep_got, ("dice", "iou", "auc", "aji", "pq"))
    for m in ("dice", "iou", "auc", "aji", "pq"):
        assert got["robustness"]["summary"][m] == pytest.approx(want["robustness"]["summary"][m], abs=1e-5)
    # one set of files, written by rank 0 alone (no temporary leftovers of a second writer)
    names = ["metrics.json", "robustness.csv", "robustness.json", "robustness_polar.png"]
    assert sorted(p.name for p in (two / "eval").iterdir()) == names
    assert len(list((two / "logs").glob("events.out.tfevents.*"))) == 1
    assert log.count("rotation robustness report:") == 1 and log.count("evaluation summary written to") == 1, log[-6000:]


@pytest.mark.slow
def test_multi_gpu_train_compiled_matches_eager(tmp_path):
    """multi_gpu_train.json with ``--compile true`` (MONAI compiles the DDP-wrapped network; aot_eager backend) on 2
    gloo processes trains as the eager run does, and its checkpoints hold the plain network's keys."""
    cfg = f"['{TRAIN}','{MULTI_GPU}']"
    env = bundle_env()
    env["OMP_NUM_THREADS"] = "1"
    summaries = {}
    for name, extra in (("eager", []), ("compiled", ["--compile", "true", "--compile_kwargs", "{'backend': 'aot_eager'}"])):
        data, out = tmp_path / "data", tmp_path / name
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "monai.bundle",
            "run", "--config_file", cfg, *_common(data, out), "--synthetic", repr({**SYNTH, "n_images": 10}),
            "--epochs", "2", "--val_interval", "1", "--crop_size", "32", "--batch_size", "2", "--crops_per_image", "2",
            *extra,
        ]  # fmt: skip
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
        summaries[name] = json.loads((out / "train_summary.json").read_text())
        state = torch.load(out / "models" / "checkpoint_epoch=2.pt", weights_only=True)["model"]
        assert not [k for k in state if k.startswith("module.") or "_orig_mod" in k]
    for key in ("final_loss", "best_metric"):
        assert abs(summaries["compiled"][key] - summaries["eager"][key]) < 1e-4 * max(1.0, abs(summaries["eager"][key]))


def test_multi_gpu_inference_config_shards_every_tile_once():
    """multi_gpu_inference.json: its sampler gives every tile to exactly one process, also with fewer tiles than
    processes (the processes beyond the last tile get none); the settings are checked by name as in inference.json,
    before the process group and the data; the process group exists before the datalist (synthetic data are made
    by process 0 first) and rank 0 removes the earlier outputs after the evaluator was built, as inference.json."""
    base = config_parser([INFERENCE], metadata=METADATA)["initialize"]
    init = config_parser([INFERENCE, MULTI_GPU_INFERENCE], metadata=METADATA)["initialize"]
    assert init[:6] == base[:6] and init[0] == "$monai_gmr.workflows.check_cli_setting_names()"
    where = {key: next(i for i, x in enumerate(init) if key in x)
             for key in ("init_process_group", "len(@datalist)", "$@evaluator", "remove_earlier_outputs")}  # fmt: skip
    assert 5 < where["init_process_group"] < where["len(@datalist)"] < where["$@evaluator"] < where["remove_earlier_outputs"]
    assert "barrier_after=True" in init[where["remove_earlier_outputs"]]
    finalize = config_parser([INFERENCE, MULTI_GPU_INFERENCE], metadata=METADATA)["finalize"]
    assert "dist.barrier()" in finalize[0] and "run_on_rank0(monai_gmr.workflows.nuclei.report_outputs" in finalize[1]
    for n, world in ((3, 2), (1, 2), (2, 3), (5, 4), (8, 4)):
        shards = []
        for rank in range(world):
            p = config_parser([INFERENCE, MULTI_GPU_INFERENCE], metadata=METADATA, dataset=f"$list(range({n}))",
                              **{"sampler#num_replicas": world, "sampler#rank": rank})  # fmt: skip
            loader = p.get_parsed_content("dataloader")
            assert loader.sampler is p.get_parsed_content("sampler")
            shards.append([int(i) for i in loader.sampler])
        assert sorted(i for shard in shards for i in shard) == list(range(n)), (n, world, shards)
        assert [len(shard) for shard in shards] == [len(range(r, n, world)) for r in range(world)], shards
    check_settings_refused_by_name([INFERENCE, MULTI_GPU_INFERENCE], metadata=METADATA, cases=[
        ("seed", "abc", "initialize#2"), ("num_classes", 3.0, "initialize#1"), ("min_nucleus_size", "ten", "initialize#4"),
    ])  # fmt: skip
    with pytest.raises(Exception, match="tta_angles"):
        config_parser([INFERENCE, MULTI_GPU_INFERENCE], tta_angles=[], metadata=METADATA).get_parsed_content("initialize#5")


def _tiny_checkpoint(tmp_path: Path) -> Path:
    """``tmp_path / "model.pt"``: the weights of the tiny network (seed 0)."""
    torch.manual_seed(0)
    net = config_parser([INFERENCE], network_def=eval(TINY_NET), metadata=METADATA).get_parsed_content("network_def")
    torch.save(net.state_dict(), tmp_path / "model.pt")
    return tmp_path / "model.pt"


def _inference_input(tmp_path: Path, nuclei_data: Path, n: int) -> tuple[Path, Path]:
    """A folder of the first ``n`` tiles of ``nuclei_data`` and a checkpoint of the tiny network (seed 0)."""
    import shutil

    tiles = tmp_path / "tiles"
    tiles.mkdir()
    for src in sorted((nuclei_data / "images").glob("*.png"))[:n]:
        shutil.copy(src, tiles / src.name)
    return tiles, _tiny_checkpoint(tmp_path)


def _torchrun_inference(tmp_path: Path, tiles: Path | None, ckpt: Path, pred: Path, *args: str, nproc: int = 2,
                        tee: bool = False) -> tuple[str, int, list]:  # fmt: skip
    """multi_gpu_inference.json under torchrun (gloo, ``nproc`` processes) on the images in ``tiles`` (``None``: the
    test split of a ``--dataset_dir`` in ``args``); a third config file records how many tiles each process ran
    (``iterations_rank<r>.txt`` in ``tmp_path``). Returns the log, the exit code and the per-process tile counts
    (rank order). ``tee``: torchrun's ``--tee 3``, every output line prefixed by ``[default<rank>]:``."""
    record = tmp_path / "record.json"
    record.write_text(json.dumps({"run": [
        "$@evaluator.run() if len(@dataloader) > 0 else None",
        f"$open(os.path.join({str(tmp_path)!r}, f'iterations_rank{{dist.get_rank()}}.txt'), 'w')"
        ".write(str(@evaluator.state.iteration))",
    ]}))  # fmt: skip
    run = json.loads(Path(MULTI_GPU_INFERENCE).read_text())["run"]
    assert run == json.loads(record.read_text())["run"][:1]  # the recording config runs what the bundle runs
    cfg = f"['{INFERENCE}','{MULTI_GPU_INFERENCE}','{record}']"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        *(["--tee", "3"] if tee else []), "-m", "monai.bundle",
        "run", "--config_file", cfg, "--network_def", TINY_NET, "--ckpt_path", str(ckpt), "--pred_dir", str(pred),
        "--output_dir", str(tmp_path / "out"), "--roi_size", "[64, 64]", "--num_workers", "0",
        *(["--input_dir", str(tiles)] if tiles is not None else []), *args,
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env=bundle_env(), capture_output=True, text=True, timeout=180)
    counts = [int(f.read_text()) if (f := tmp_path / f"iterations_rank{r}.txt").is_file() else None for r in range(nproc)]
    return proc.stdout + proc.stderr, proc.returncode, counts


def _outputs_line(n: int, pred: Path) -> str:
    return f"inference wrote {n} *_seg.png, {n} *_instance.png, {n} *_prob.tif for {n} image(s) to {pred.resolve()}"


def test_multi_gpu_inference_gloo_two_processes(tmp_path, nuclei_data):
    """multi_gpu_inference.json on CPU (torchrun, 2 gloo processes, 3 tiles): each tile is segmented by one process
    (2 + 1), the masks are those of a one-process inference.json run with the same checkpoint, the earlier run's
    outputs of these tiles are gone and another image's are kept, and process 0 alone reports all 3 tiles once
    every process has written its own."""
    import tifffile

    tiles, ckpt = _inference_input(tmp_path, nuclei_data, 3)
    names = sorted(p.stem for p in tiles.iterdir())
    ref = tmp_path / "ref"
    run_bundle([INFERENCE], "--network_def", TINY_NET, "--ckpt_path", str(ckpt), "--input_dir", str(tiles),
               "--pred_dir", str(ref), "--output_dir", str(tmp_path / "out"), "--roi_size", "[64, 64]",
               "--num_workers", "0", cwd=tmp_path)  # fmt: skip
    pred = tmp_path / "pred"
    pred.mkdir()
    for name in [*names, "other"]:
        for suffix in ("_seg.png", "_instance.png", "_prob.tif"):
            (pred / f"{name}{suffix}").write_bytes(b"earlier run")
    log, rc, counts = _torchrun_inference(tmp_path, tiles, ckpt, pred)
    assert rc == 0, log[-6000:]
    assert counts == [2, 1], counts  # no tile twice (3 + 3 without the sampler), none skipped
    expected = sorted(f"{n}{s}" for n in names for s in ("_seg.png", "_instance.png", "_prob.tif"))
    assert sorted(p.name for p in ref.iterdir()) == expected
    assert sorted(p.name for p in pred.iterdir()) == sorted([*expected, "other_seg.png", "other_instance.png",
                                                              "other_prob.tif"])  # fmt: skip
    for f in expected:
        if f.endswith(".png"):
            np.testing.assert_array_equal(np.array(Image.open(pred / f)), np.array(Image.open(ref / f)), err_msg=f)
        else:
            np.testing.assert_allclose(tifffile.imread(pred / f), tifffile.imread(ref / f), atol=1e-5, err_msg=f)
    assert (pred / "other_seg.png").read_bytes() == b"earlier run"
    assert log.count("inference wrote ") == 1 and _outputs_line(3, pred) in log, log[-6000:]


def test_multi_gpu_inference_fewer_tiles_than_processes(tmp_path, nuclei_data):
    """One tile, two processes: process 0 segments it, process 1 gets an empty shard and waits (MONAI's
    DistributedSampler refused fewer items than processes), and the run ends normally."""
    tiles, ckpt = _inference_input(tmp_path, nuclei_data, 1)
    pred = tmp_path / "pred"
    log, rc, counts = _torchrun_inference(tmp_path, tiles, ckpt, pred)
    assert rc == 0, log[-6000:]
    assert counts == [1, 0], counts
    name = next(tiles.iterdir()).stem
    assert sorted(p.name for p in pred.iterdir()) == sorted(f"{name}{s}" for s in ("_seg.png", "_instance.png", "_prob.tif"))
    assert log.count("inference wrote ") == 1 and _outputs_line(1, pred) in log, log[-6000:]


def test_multi_gpu_inference_generates_the_synthetic_data_once(tmp_path):
    """Without input_dir and data, process 0 generates the synthetic dataset while the other waits (no two
    processes writing the same tiles), and both segment its test split. Process 0 reads ``dataset_dir`` 2 s late:
    had process 1 not waited for it (the datalist read before the process group exists), process 1 would have
    generated the data."""
    ckpt = _tiny_checkpoint(tmp_path)
    data, pred = tmp_path / "data", tmp_path / "pred"
    late = f"$__import__('time').sleep(2 if os.environ.get('RANK') == '0' else 0) or {str(data)!r}"
    log, rc, counts = _torchrun_inference(tmp_path, None, ckpt, pred, "--dataset_dir", late, "--synthetic",
                                          repr({**SYNTH, "n_images": 10}), tee=True)  # fmt: skip
    assert rc == 0, log[-6000:]
    wrote = [line for line in log.splitlines() if "synthetic nuclei tiles" in line]
    assert len(wrote) == 1 and wrote[0].startswith("[default0]:"), log[-6000:]
    used = [line for line in log.splitlines() if f"using the dataset in {data}" in line]
    assert len(used) == 1 and used[0].startswith("[default1]:"), log[-6000:]  # process 1 found it ready
    from monai_gmr.workflows.nuclei import inference_datalist

    names = [Path(d["image"]).stem for d in inference_datalist(None, data, "test", generate=False, check=False)]
    assert len(names) == 2 and counts == [1, 1], (names, counts)
    assert sorted(p.name for p in pred.iterdir()) == sorted(f"{n}{s}" for n in names
                                                            for s in ("_seg.png", "_instance.png", "_prob.tif"))  # fmt: skip


def test_multi_gpu_inference_failure_on_one_process_ends_the_run(tmp_path, nuclei_data):
    """A tile that process 1 cannot write (a folder where its mask goes) ends the whole run with an error naming the
    file, instead of process 0 waiting for it at the final barrier; no outputs summary is logged."""
    tiles, ckpt = _inference_input(tmp_path, nuclei_data, 3)
    pred = tmp_path / "pred"
    second = sorted(p.stem for p in tiles.iterdir())[1]  # the sampler's item 1: process 1's
    (pred / f"{second}_seg.png").mkdir(parents=True)
    log, rc, counts = _torchrun_inference(tmp_path, tiles, ckpt, pred)  # hangs (timeout) if process 0 waits
    assert rc != 0, log[-6000:]
    assert "IsADirectoryError" in log and f"{second}_seg.png" in log, log[-6000:]
    assert "inference wrote " not in log and counts[1] is None, (counts, log[-6000:])


# ---------------------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("generate", [False, "false"])  # "false": from the command line (--generate_synthetic false)
def test_missing_or_empty_dataset_without_generation(tmp_path, generate):
    out = tmp_path / "out"
    for data in (tmp_path / "missing", tmp_path / "empty"):
        if data.name == "empty":
            data.mkdir()
        msg = workflow_error(TRAIN, dataset_dir=str(data), output_dir=str(out), generate_synthetic=generate,
                             synthetic=SYNTH, epochs=1, epoch_length=1, num_workers=0, network_def=eval(TINY_NET))
        assert str(data) in msg, msg
        assert no_outputs(out)
        assert not data.exists() or not list(data.iterdir())  # nothing generated


def _dataset_with(tmp_path: Path, bad: str) -> Path:
    from monai_gmr.data import ensure_nuclei_dataset

    data = tmp_path / "data"
    datalist = Path(ensure_nuclei_dataset(str(data), generate=True, **SYNTH))
    dl = json.loads(datalist.read_text())
    item = dl["training"][0]
    img = (datalist.parent / item["image"]) if not Path(item["image"]).is_absolute() else Path(item["image"])
    lab = (datalist.parent / item["label"]) if not Path(item["label"]).is_absolute() else Path(item["label"])
    if bad == "size":
        arr = np.array(Image.open(lab))
        Image.fromarray(arr[:-8]).save(lab)
        return lab
    img.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    return img


@pytest.mark.parametrize("bad", ["size", "unreadable"])
def test_bad_data_errors_name_the_file(tmp_path, bad):
    bad_file = _dataset_with(tmp_path, bad)
    out = tmp_path / "out"
    msg = workflow_error(TRAIN, dataset_dir=str(tmp_path / "data"), output_dir=str(out), synthetic=SYNTH)
    assert bad_file.name in msg, msg
    assert ("mismatch" in msg) if bad == "size" else ("cannot read" in msg), msg
    assert no_outputs(out)


def test_a_misspelt_setting_stops_the_run_before_anything_is_written(tmp_path):
    """``--epoch 2`` (for ``--epochs 2``): MONAI added ``epoch`` to the config silently and trained the default 100
    epochs; the configs' first ``initialize`` step refuses it by name with the closest known id, before the dataset
    is generated or any output is written."""
    data, out = tmp_path / "data", tmp_path / "run"
    args = ["--epoch" if a == "--epochs" else a for a in TRAIN_ARGS]
    proc = run_bundle([TRAIN], *_common(data, out), *args, cwd=tmp_path, check=False)
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0, log[-3000:]
    assert "Unknown setting 'epoch' (did you mean 'epochs'?)" in log, log[-3000:]
    assert no_outputs(out) and not data.exists(), sorted(str(p) for p in tmp_path.rglob("*"))


@pytest.fixture(scope="module")
def nuclei_data(tmp_path_factory) -> Path:
    """A tiny synthetic nuclei dataset (read-only for the tests that use it)."""
    from monai_gmr.data import ensure_nuclei_dataset

    data = tmp_path_factory.mktemp("nuclei_bundle") / "data"
    ensure_nuclei_dataset(str(data), generate=True, **SYNTH)
    return data


def _tiny_train(data: Path, out: Path, **kw) -> dict:
    return {"dataset_dir": str(data), "output_dir": str(out), "generate_synthetic": False, "synthetic": SYNTH,
            "network_def": eval(TINY_NET), "num_workers": 0, "epochs": 1, "epoch_length": 1, "val_interval": 1,
            "crop_size": 32, "batch_size": 2, "crops_per_image": 2, "roi_size": [64, 64], "cache_rate": 0.0,
            "device": "$torch.device('cpu')", "amp": False, **kw}  # fmt: skip


@pytest.mark.parametrize("bad", BAD_TRAIN_SETTINGS + ({"crops_per_image": 0},),  # MONAI: "num_samples must be positive"
                         ids=lambda d: "-".join(f"{k}={v}" for k, v in d.items()))  # fmt: skip
def test_bad_settings_write_nothing(tmp_path, nuclei_data, bad):
    """A setting that is only checked while the trainer is built or started (after its TensorBoard writer and
    checkpoint savers exist) stops the run without an event file in logs/ or an empty models/ folder."""
    out = tmp_path / "out"
    msg = workflow_error(TRAIN, **_tiny_train(nuclei_data, out, **bad))
    assert no_outputs(out), sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    assert f"{next(iter(bad))} must be" in msg, msg  # the error names the setting


def test_crop_size_text_is_refused_by_name_in_the_train_config(tmp_path):
    """--crop_size 32x failed in the rotation crop size's expression with "can't multiply sequence by non-int of
    type 'float'", naming no setting (the trainer is built before the window sizes are checked)."""
    p = config_parser([TRAIN], output_dir=str(tmp_path / "o"), crop_size="32x", metadata=METADATA)
    with pytest.raises(Exception) as info:
        p.get_parsed_content("train#rotation_crop_size")
    assert "crop_size must be a positive integer" in str(info.value.__cause__ or info.value), info.value
    assert config_parser([TRAIN], crop_size=32, metadata=METADATA).get_parsed_content("train#rotation_crop_size") == 48


@pytest.mark.parametrize("bad", [{"crop_size": 30}, {"roi_size": [60, 60]}, {"roi_size": 100}],
                         ids=lambda d: "-".join(f"{k}={v}" for k, v in d.items()))  # fmt: skip
def test_sizes_the_network_cannot_take_are_refused_by_name_before_training(tmp_path, nuclei_data, bad):
    """crop_size 30 stopped at the first training step and roi_size [60, 60] only at the first validation, after
    val_interval epochs of training, with GMRUNet's input-shape error that named neither setting."""
    out = tmp_path / "out"
    msg = workflow_error(TRAIN, **_tiny_train(nuclei_data, out, **bad))
    name = next(iter(bad))
    assert f"{name}=" in msg and "divisible by" in msg, msg
    assert no_outputs(out), sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    # evaluation and inference read roi_size too
    msg = workflow_error(INFERENCE, dataset_dir=str(nuclei_data), output_dir=str(out), network_def=eval(TINY_NET),
                         roi_size=[60, 60], generate_synthetic=False)  # fmt: skip
    assert "roi_size=" in msg and "divisible by" in msg, msg
    # with pad_to_multiple the network takes the size: no refusal
    from monai_gmr.nets import GMRUNet
    from monai_gmr.workflows.nuclei import check_window_sizes

    check_window_sizes(GMRUNet(2, 3, 2, features=(4, 4, 4, 4), pad_to_multiple=True), crop_size=30)
    check_window_sizes(torch.nn.Conv2d(3, 2, 3), crop_size=30)  # no `multiple`: not checked


@pytest.mark.parametrize("bad", [{"instance_method": "watershd"}, {"min_nucleus_size": "ten"}],
                         ids=lambda d: "-".join(f"{k}={v}" for k, v in d.items()))  # fmt: skip
def test_bad_instance_settings_stop_evaluation_and_inference_first(tmp_path, nuclei_data, bad):
    """--instance_method watershd stopped inference only after the network ran on the first image, with
    "method must be ..." naming no setting (evaluation: after the validation run)."""
    out = tmp_path / "out"
    net = config_parser([INFERENCE], network_def=eval(TINY_NET), output_dir=str(out), metadata=METADATA).get_parsed_content("network_def")
    (out / "models").mkdir(parents=True)
    torch.save(net.state_dict(), out / "models" / "model.pt")
    common = {"dataset_dir": str(nuclei_data), "output_dir": str(out), "network_def": eval(TINY_NET),
              "generate_synthetic": False, "roi_size": [64, 64], **bad}  # fmt: skip
    msg = workflow_error(INFERENCE, **common)
    assert f"{next(iter(bad))} must be" in msg, msg
    msg = workflow_error([TRAIN, EVALUATE], **common, instance_metrics=True, num_workers=0)
    assert f"{next(iter(bad))} must be" in msg, msg
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == ["models", "models/model.pt"]


@pytest.mark.parametrize("bad", [{"robustness_region": "valdi"}, {"robustness_angles": []},
                                 {"robustness_flips": ["x"]}, {"robustness_angles": "null"}],
                         ids=lambda d: "-".join(f"{k}={v}" for k, v in d.items()))  # fmt: skip
def test_bad_robustness_settings_stop_evaluation_before_the_validation_run(tmp_path, nuclei_data, bad):
    """--robustness_region valdi, --robustness_angles "[]" or --robustness_flips "['x']" stopped evaluation only
    after the validation run over the whole split (the robustness evaluator reads them when it starts), naming
    region / angles / axis but no setting; now initialize refuses them by name, before any data are read."""
    out = tmp_path / "out"
    parser = config_parser([INFERENCE], network_def=eval(TINY_NET), output_dir=str(out), metadata=METADATA)
    (out / "models").mkdir(parents=True)
    torch.save(parser.get_parsed_content("network_def").state_dict(), out / "models" / "model.pt")
    msg = workflow_error([TRAIN, EVALUATE], dataset_dir=str(nuclei_data), output_dir=str(out),
                         network_def=eval(TINY_NET), generate_synthetic=False, roi_size=[64, 64], num_workers=0,
                         **bad)  # fmt: skip
    assert f"{next(iter(bad))}=" in msg or f"{next(iter(bad))} must be" in msg, msg
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == ["models", "models/model.pt"]


def test_inference_removes_the_earlier_outputs_of_its_images_before_it_runs(tmp_path, nuclei_data):
    """Inference writes image by image: a run that failed at its first image left the masks an earlier run wrote for
    the images of this run in pred_dir, indistinguishable from new ones. They are now removed once the checkpoint
    is loaded, before the network runs; outputs of other images stay."""
    from monai_gmr.workflows.nuclei import inference_datalist

    out, pred = tmp_path / "out", tmp_path / "pred"
    net = {"_target_": "torch.nn.Conv2d", "in_channels": 4, "out_channels": 2, "kernel_size": 1}  # fails on RGB
    (out / "models").mkdir(parents=True)
    torch.save(torch.nn.Conv2d(4, 2, 1).state_dict(), out / "models" / "model.pt")
    names = [Path(d["image"]).stem for d in inference_datalist(None, nuclei_data, "test", generate=False, check=False)]
    pred.mkdir()
    stale = [pred / f"{n}{s}" for n in names for s in ("_seg.png", "_instance.png", "_prob.tif")]
    for p in [*stale, pred / "other_seg.png"]:
        p.write_bytes(b"earlier run")
    msg = workflow_error(INFERENCE, dataset_dir=str(nuclei_data), output_dir=str(out), pred_dir=str(pred),
                         network_def=net, generate_synthetic=False, roi_size=[64, 64])  # fmt: skip
    assert "channels" in msg, msg  # the network failed on the first image
    assert sorted(p.name for p in pred.iterdir()) == ["other_seg.png"]

@pytest.mark.parametrize("content", ["empty", "user files"])
def test_bad_setting_leaves_an_existing_output_dir_untouched(tmp_path, nuclei_data, content):
    """The folders a failed run created are removed, and only those: an output_dir that existed before (empty, or
    holding the user's files and an empty folder of theirs) is left exactly as it was."""
    out = tmp_path / "out"
    out.mkdir()
    if content == "user files":
        (out / "notes.txt").write_text("mine")
        (out / "models").mkdir()  # the user's own (empty) folder, where the run would save checkpoints
        (out / "keep").mkdir()
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    msg = workflow_error(TRAIN, **_tiny_train(nuclei_data, out, amp="maybe"))
    assert "amp must be" in msg, msg
    assert out.is_dir() and sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
    if content == "user files":
        assert (out / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("num_classes", [1, 4])
def test_num_classes_other_than_2_or_3_is_an_error_naming_it(tmp_path, nuclei_data, num_classes):
    """The labels have classes 0..1 (0..2 with the boundary): num_classes=1 failed in the first training step
    (leaving an event file), num_classes=4 trained two output channels that no label marks."""
    out = tmp_path / "out"
    msg = workflow_error(TRAIN, **_tiny_train(nuclei_data, out, num_classes=num_classes))
    assert f"num_classes={num_classes}" in msg and "must be 2" in msg, msg
    assert no_outputs(out)


def test_evaluate_and_inference_without_checkpoint(tmp_path):
    out = tmp_path / "out"
    data = tmp_path / "data"
    msg = workflow_error([TRAIN, EVALUATE], dataset_dir=str(data), output_dir=str(out), synthetic=SYNTH)
    assert "model.pt" in msg and "does not exist" in msg
    msg = workflow_error(INFERENCE, dataset_dir=str(data), output_dir=str(out), synthetic=SYNTH)
    assert "model.pt" in msg
    assert no_outputs(out)


def test_multi_gpu_validation_split_shorter_than_processes_is_named():
    check_validation_shorter_than_processes([TRAIN, MULTI_GPU], metadata=METADATA)


def test_multi_gpu_evaluation_split_shorter_than_processes_is_named():
    """multi_gpu_evaluate.json over fewer test images than processes: both samplers (the validation evaluator's and
    the robustness loader's with instance metrics) refuse it naming the split and both numbers (MONAI's
    DistributedSampler(even_divisible=False) said only "the dataset length is less than the number of participating
    ranks")."""
    p = config_parser([TRAIN, EVALUATE, MULTI_GPU_EVAL], metadata=METADATA)
    p["eval_data"] = "$[[0], 'test']"
    p["validate#dataset"] = p["robustness_dataset"] = "$[0]"
    for key in ("validate#sampler", "robustness_sampler"):
        check_sampler_refuses_a_short_split(p, key, "test")
        p[f"{key}#num_replicas"] = 1
        p[f"{key}#rank"] = 0
        assert list(p.get_parsed_content(key)) == [0]


def test_config_settings_seed_log_interval_cache_rate_num_workers_are_checked_by_name():
    """--seed abc failed inside MONAI's set_determinism ("invalid literal for int()") and --seed 1.5 was truncated;
    --log_interval x, --num_workers two failed with "'<' not supported between 'str' and 'int'"; --cache_rate 2 or
    -0.5 was accepted silently and --cache_rate all failed with "invalid literal for int() ... 'allallallall'"."""
    seed = init_id([TRAIN], "set_determinism", metadata=METADATA)
    check_settings_refused_by_name([TRAIN], metadata=METADATA, cases=[
        ("seed", "abc", seed), ("seed", 1.5, seed), ("log_interval", "x", "train#handlers#3#interval"),
        ("log_interval", -1, "train#handlers#3#interval"), ("cache_rate", 2, "train#dataset#cache_rate"),
        ("cache_rate", "all", "validate#dataset#cache_rate"), ("num_workers", "two", "train#dataloader#num_workers"),
        ("num_workers", -1, "validate#dataloader#num_workers"),
    ])  # fmt: skip
    check_settings_refused_by_name([TRAIN, EVALUATE], metadata=METADATA, cases=[("seed", "abc", "initialize#2")])
    seed = init_id([TRAIN, MULTI_GPU], "set_determinism", metadata=METADATA)
    check_settings_refused_by_name([TRAIN, MULTI_GPU], metadata=METADATA, cases=[("seed", 1.5, seed)])
    check_settings_refused_by_name([TRAIN, EVALUATE, MULTI_GPU_EVAL], metadata=METADATA, cases=[("seed", 1.5, "initialize#6")])
    check_settings_refused_by_name([INFERENCE], metadata=METADATA, cases=[
        ("seed", "abc", "initialize#2"), ("num_workers", "two", "dataloader#num_workers"),
    ])  # fmt: skip
    p = config_parser([TRAIN], log_interval=0, cache_rate=0.5, num_workers=0, metadata=METADATA)
    assert p.get_parsed_content("train#handlers#3#interval") == 0  # 0: no iteration lines, as documented
    assert p.get_parsed_content("train#dataset#cache_rate") == 0.5 and p.get_parsed_content("train#dataloader#num_workers") == 0



def test_config_splits_and_num_classes_are_refused_by_setting_name():
    """--eval_split tset / --input_split tset were refused by the datalist function with "split must be one of ...",
    naming its argument, not the setting; --num_classes 2.0 passed has_boundary_class (2.0 == 2) and failed in the
    network, whose message named its out_channels."""
    check_settings_refused_by_name([TRAIN, EVALUATE], metadata=METADATA, cases=[("eval_split", "tset", "eval_data")])
    check_settings_refused_by_name([INFERENCE], metadata=METADATA, cases=[("input_split", "tset", "datalist")])
    check_settings_refused_by_name([TRAIN], metadata=METADATA, cases=[("num_classes", 2.0, "boundary"),
                                                                     ("num_classes", True, "boundary")])
    # checked in initialize, right after the other training settings, before any data are generated (it was read
    # only once the datalists existed); evaluation and inference check it before the network is built
    for configs, id in (([TRAIN], init_id([TRAIN], "$@boundary", metadata=METADATA)),
                        ([TRAIN, MULTI_GPU], init_id([TRAIN, MULTI_GPU], "$@boundary", metadata=METADATA)), ([TRAIN, EVALUATE], "initialize#1"),
                        ([TRAIN, EVALUATE, MULTI_GPU_EVAL], "initialize#1")):
        check_settings_refused_by_name(configs, metadata=METADATA, cases=[("num_classes", 2.0, id)])
        init = config_parser(configs, metadata=METADATA)["initialize"]
        assert not any("datalist" in x or "network" in x for x in init[: int(id.split("#")[1])]), init
    check_settings_refused_by_name([INFERENCE], metadata=METADATA, cases=[("num_classes", 3.0, "initialize#1"),
                                                                         ("num_classes", 3.0, "postprocessing")])
    assert config_parser([TRAIN], num_classes=3, metadata=METADATA).get_parsed_content("boundary") is True

def test_config_training_settings_are_refused_by_name_before_the_data(tmp_path):
    """--batch_size 0, --learning_rate abc, --epochs 0, --amp maybe, ... were read only when the optimizer, data
    loaders, handlers and trainer were built, after the synthetic data had been generated (1.4 s by
    default): check_training_settings, right after the setting-name check, now refuses them by name first."""
    check_training_settings_refused_before_the_data(TRAIN, MULTI_GPU, metadata=METADATA,
                                                     extra=[("crops_per_image", 0), ("cache_rate", 2), ("sw_padding", "circular")],
                                                     data=tmp_path / "data", output_dir=str(tmp_path / "out"), synthetic=SYNTH)


class _BrighterThanTheWindow(torch.nn.Module):
    """Two-class logits: nucleus where a pixel is brighter than its window's mean (a global statistic, as instance
    norm computes one)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = x.mean(1, keepdim=True)
        fg = g - g.mean(dim=(2, 3), keepdim=True)
        return torch.cat([-fg, fg], 1)


def test_tiles_smaller_than_the_window_are_padded_by_reflection_in_every_config():
    """A tile smaller than ``roi_size`` was padded with MONAI's constant 0 (black): a network with instance norm
    read the black border as part of the tile, and on 96- and 160-pixel crops of CPM-15 tiles with the 256 window
    a trained GMRUNet found almost no nucleus (Dice 0.06 / 0.04; 0.78 / 0.81 on the crop alone;
    scripts/small_tile_padding.py). The windows of validation, evaluation and inference now pad by reflection
    (``--sw_padding``), for any pad (more than the tile here), so a tile keeps its own statistics."""
    g = torch.Generator().manual_seed(0)
    bright = torch.rand(1, 1, 40, 24, generator=g) > 0.5
    tile = torch.where(bright, 0.8, 0.2).expand(1, 3, 40, 24).clone()  # more than half of the window is padding
    net = _BrighterThanTheWindow()
    for configs, id in (([TRAIN], "validate#inferer"), ([TRAIN, EVALUATE], "validate#sw_inferer"),
                        ([TRAIN, EVALUATE, MULTI_GPU_EVAL], "validate#sw_inferer"), ([INFERENCE], "sw_inferer"),
                        ([INFERENCE, MULTI_GPU_INFERENCE], "sw_inferer")):  # fmt: skip
        inferer = config_parser(configs, metadata=METADATA, roi_size=[128, 128]).get_parsed_content(id)
        assert inferer.padding_mode == "reflect", (configs, id)
        pred = inferer(tile, net).argmax(1, keepdim=True)
        assert torch.equal(pred.bool(), bright), (configs, id, (pred.bool() != bright).float().mean())
    # the old padding: the black border drags the window's mean down and (almost) every pixel reads as a nucleus
    black = config_parser([INFERENCE], metadata=METADATA, roi_size=[128, 128], sw_padding="constant").get_parsed_content("sw_inferer")
    assert black(tile, net).argmax(1).float().mean() > 0.9
    # training mirrors tiles smaller than crop_size (and the larger crop of rotation augmentation) too, image and
    # label alike, for any pad: MONAI's SpatialPadd(mode="reflect") raises when the pad is wider than the tile
    from monai.data import MetaTensor

    p = config_parser([TRAIN], metadata=METADATA)
    img = MetaTensor(torch.rand(3, 20, 30, generator=g))
    item = {"image": img, "label": MetaTensor((img[:1] > 0.5).long())}
    for id in ("train#crop_transforms", "train#crop_rotate_transforms"):
        pad = p.get_parsed_content(id)[0]
        out = pad(dict(item))
        size = p.get_parsed_content("crop_size" if id == "train#crop_transforms" else "train#rotation_crop_size")
        assert out["image"].shape == (3, size, size) and out["label"].shape == (1, size, size), id
        want = np.pad(img.numpy(), [(0, 0)] + [((size - s) // 2, size - s - (size - s) // 2) for s in (20, 30)], "symmetric")
        assert np.array_equal(out["image"].numpy(), want), id
        assert torch.equal(out["label"], (out["image"][:1] > 0.5).long()), id
    for configs, id in (([TRAIN], "initialize#1"), ([TRAIN, EVALUATE], "initialize#3"), ([INFERENCE], "initialize#3"),
                        ([INFERENCE, MULTI_GPU_INFERENCE], "initialize#3"), ([TRAIN], "validate#inferer"),
                        ([INFERENCE], "sw_inferer")):  # fmt: skip
        check_settings_refused_by_name(configs, metadata=METADATA, cases=[("sw_padding", "circular", id)])

def test_config_settings_robustness_metrics_are_checked_by_name_before_the_data():
    """--robustness_metrics "['dcie']" stopped evaluation only after the validation run over the whole split."""
    check_settings_refused_by_name([TRAIN, EVALUATE], metadata=METADATA, cases=[
        ("robustness_metrics", ["dcie"], "initialize#5"),
    ])  # fmt: skip
    check_settings_refused_by_name([TRAIN, EVALUATE, MULTI_GPU_EVAL], metadata=METADATA, cases=[
        ("robustness_metrics", ["dcie"], "initialize#9"),
    ])  # fmt: skip


@pytest.mark.parametrize("bad", [{"tta_angles": []}, {"amp": "maybe"}, {"sw_batch_size": "x"}],
                         ids=lambda d: "-".join(f"{k}={v}" for k, v in d.items()))  # fmt: skip
def test_bad_inference_setting_keeps_the_earlier_outputs(tmp_path, nuclei_data, bad):
    """A setting read only when the evaluator was built (--tta_angles "[]", --amp maybe, --sw_batch_size x) stopped
    inference after initialize had removed the earlier run's masks of the same images: the user lost them for a
    typo. The evaluator is now built before they are removed."""
    from monai_gmr.workflows.nuclei import inference_datalist

    out, pred = tmp_path / "out", tmp_path / "pred"
    net = config_parser([INFERENCE], network_def=eval(TINY_NET), metadata=METADATA).get_parsed_content("network_def")
    (out / "models").mkdir(parents=True)
    torch.save(net.state_dict(), out / "models" / "model.pt")
    names = [Path(d["image"]).stem for d in inference_datalist(None, nuclei_data, "test", generate=False, check=False)]
    pred.mkdir()
    earlier = [pred / f"{n}{s}" for n in names for s in ("_seg.png", "_instance.png", "_prob.tif")]
    for p in earlier:
        p.write_bytes(b"earlier run")
    msg = workflow_error(INFERENCE, dataset_dir=str(nuclei_data), output_dir=str(out), pred_dir=str(pred),
                         network_def=eval(TINY_NET), generate_synthetic=False, roi_size=[64, 64], **bad)  # fmt: skip
    assert any(s in msg for s in ("angles", "amp must be", "sw_batch_size must be")), msg
    assert all(p.read_bytes() == b"earlier run" for p in earlier)


def test_config_tta_settings_are_checked_by_name_in_initialize(tmp_path):
    """--tta_angles "[]" failed when the inferer was built, naming only RotationTTAInferer's ``angles``."""
    for configs, id in (([INFERENCE], "initialize#5"), ([TRAIN, EVALUATE], "initialize#6"),
                        ([TRAIN, EVALUATE, MULTI_GPU_EVAL], "initialize#10")):
        p = config_parser(configs, tta_angles=[], dataset_dir=str(tmp_path / "data"), output_dir=str(tmp_path / "out"),
                          metadata=METADATA)  # fmt: skip
        with pytest.raises(Exception, match="tta_angles"):
            p.get_parsed_content(id)


def test_config_key_metric_check_takes_no_additional_metrics():
    """``--validate#additional_metrics null`` stopped in the ``best_model_metric`` check of ``initialize``."""
    for configs in ([TRAIN], [TRAIN, MULTI_GPU]):
        check_key_metric_without_additional_metrics(configs, metadata=METADATA, default="val_mean_dice", build=configs == [TRAIN])
