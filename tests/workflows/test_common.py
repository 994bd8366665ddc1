"""Tests of monai_gmr.workflows.common (shared bundle helpers)."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from monai_gmr.utils import current_umask
from monai_gmr.workflows import common
from monai_gmr.workflows.common import (
    AtomicCheckpointSaver,
    AtomicPILWriter,
    EpochValidationHandler,
    InstanceMaskd,
    KeyMetricState,
    ProgressLogger,
    atomic_writer_for,
    attach_resume,
    check_datalist,
    find_bundle_root,
    find_latest_checkpoint,
    instance_from_semantic,
    list_images,
    load_checkpoint,
    rank_seed,
    run_on_rank0_first,
    summarize_evaluation,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: tiny, overhead-bound tensors

ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------------ bundle root
def test_find_bundle_root_from_argv(tmp_path, monkeypatch):
    cfg = tmp_path / "mybundle" / "configs"
    cfg.mkdir(parents=True)
    monkeypatch.setattr(sys, "argv", ["x", "run", "--config_file", f"['{cfg / 'train.json'}','{cfg / 'b.json'}']"])
    assert find_bundle_root("whatever") == str((tmp_path / "mybundle").resolve())
    monkeypatch.setattr(sys, "argv", ["x", f"--config_file={cfg / 'train.json'}"])
    assert find_bundle_root() == str((tmp_path / "mybundle").resolve())


def test_find_bundle_root_fallbacks(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["pytest"])
    assert find_bundle_root("gmr_nuclei_segmentation") == str(ROOT / "bundles" / "gmr_nuclei_segmentation")
    assert find_bundle_root("x", default=tmp_path) == str(tmp_path.resolve())


def test_find_bundle_root_from_config_workflow(tmp_path, monkeypatch):
    from monai.bundle import ConfigWorkflow

    monkeypatch.setattr(sys, "argv", ["pytest"])
    cfg = tmp_path / "b" / "configs"
    cfg.mkdir(parents=True)
    (cfg / "train.json").write_text(json.dumps({
        "bundle_root": "$monai_gmr.workflows.find_bundle_root('nope')",
        "imports": ["$import monai_gmr", "$import monai_gmr.workflows"],
        "run": ["$@bundle_root"],
    }))
    wf = ConfigWorkflow(config_file=str(cfg / "train.json"), workflow_type=None, logging_file=False)
    wf.initialize()
    assert wf.run() == [str((tmp_path / "b").resolve())]


# ------------------------------------------------------------------------------------------------ checkpoints
def test_find_latest_checkpoint(tmp_path):
    assert find_latest_checkpoint(tmp_path / "missing") is None
    assert find_latest_checkpoint(tmp_path) is None
    for name in ["checkpoint_epoch=2.pt", "checkpoint_epoch=10.pt", "checkpoint_iteration=500.pt", "model.pt",
                 "checkpoint_final_iteration=900.pt", "tmpabc", "checkpoint_epoch=11.pt.tmp"]:
        (tmp_path / name).write_bytes(b"x")
    assert Path(find_latest_checkpoint(tmp_path)).name == "checkpoint_epoch=10.pt"
    assert Path(find_latest_checkpoint(tmp_path, kind="iteration")).name == "checkpoint_iteration=500.pt"
    with pytest.raises(ValueError, match="kind"):
        find_latest_checkpoint(tmp_path, kind="final")


def _tiny_trainer(tmp_path, max_epochs=3, n=8):
    from monai.engines import SupervisedTrainer

    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 2, 3, padding=1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    data = [{"image": torch.rand(1, 8, 8), "label": (torch.rand(1, 8, 8) > 0.5).float()} for _ in range(n)]
    loader = torch.utils.data.DataLoader(data, batch_size=2)
    from monai.losses import DiceCELoss

    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=max_epochs, train_data_loader=loader, network=net, optimizer=opt,
        loss_function=DiceCELoss(to_onehot_y=True, softmax=True),
    )
    return trainer, net, opt


def test_atomic_checkpoint_saver_and_resume(tmp_path):
    trainer, net, opt = _tiny_trainer(tmp_path, max_epochs=2)
    save = {"model": net, "optimizer": opt, "trainer": trainer}
    saver = AtomicCheckpointSaver(save_dir=str(tmp_path), save_dict=save, save_interval=1, n_saved=2)
    assert saver._interval_checkpoint.save_handler._atomic is True
    saver.attach(trainer)
    trainer.run()
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["checkpoint_epoch=1.pt", "checkpoint_epoch=2.pt"]
    assert not [p for p in tmp_path.iterdir() if not p.name.endswith(".pt")]  # no temporary leftovers
    w_saved = net.weight.detach().clone()

    # a fresh trainer resumes at epoch 2 / iteration 8 with the saved weights, then runs epoch 3 only
    trainer2, net2, opt2 = _tiny_trainer(tmp_path, max_epochs=3)
    seen = []
    from ignite.engine import Events

    trainer2.add_event_handler(Events.EPOCH_STARTED, lambda e: seen.append((e.state.epoch, e.state.iteration)))
    trainer2.add_event_handler(Events.STARTED(once=1), lambda e: None)
    path = attach_resume(trainer2, True, tmp_path, {"model": net2, "optimizer": opt2, "trainer": trainer2})
    assert Path(path).name == "checkpoint_epoch=2.pt"
    trainer2.add_event_handler(Events.EPOCH_STARTED(once=3), lambda e: seen.append(("w", torch.equal(net2.weight, w_saved))))
    trainer2.run()
    assert seen[0] == (3, 8)
    assert ("w", True) in seen
    assert trainer2.state.epoch == 3 and trainer2.state.iteration == 12
    # disabled / nothing to resume
    assert attach_resume(trainer2, False, tmp_path, {"model": net2}) is None
    assert attach_resume(trainer2, True, tmp_path / "none", {"model": net2}) is None


def test_attach_resume_reads_text_switches(tmp_path):
    """``enabled="false"`` (text, as from a command line or an ``.env``) is a fresh run, not a resume."""
    trainer, net, opt = _tiny_trainer(tmp_path, max_epochs=1)
    saver = AtomicCheckpointSaver(save_dir=str(tmp_path), save_dict={"model": net, "trainer": trainer}, save_interval=1)
    saver.attach(trainer)
    trainer.run()
    trainer2, net2, _ = _tiny_trainer(tmp_path, max_epochs=2)
    assert attach_resume(trainer2, "false", tmp_path, {"model": net2, "trainer": trainer2}) is None
    assert not list(tmp_path.glob("*.pt"))  # the earlier run's checkpoint was moved aside, as for False
    assert len(list(tmp_path.glob("previous_run_*/checkpoint_epoch=1.pt"))) == 1
    with pytest.raises(ValueError, match="enabled"):
        attach_resume(trainer2, "maybe", tmp_path, {"model": net2})


def test_key_metric_state_round_trip(tmp_path):
    net = torch.nn.Linear(2, 2)
    saver = AtomicCheckpointSaver(save_dir=str(tmp_path), save_dict={"model": net}, save_key_metric=True, key_metric_filename="model.pt")
    state = KeyMetricState(saver)
    state.load_state_dict({"saved": [[0.75, "model_key_metric=0.75.pt"]]})
    assert state.state_dict() == {"saved": [[0.75, "model_key_metric=0.75.pt"]]}
    with pytest.raises(ValueError, match="save_key_metric"):
        KeyMetricState(AtomicCheckpointSaver(save_dir=str(tmp_path), save_dict={"model": net}, save_interval=1))


def test_load_checkpoint_formats(tmp_path):
    net = torch.nn.Linear(3, 2)
    ref = {k: v.clone() for k, v in net.state_dict().items()}
    torch.save({"model": ref, "optimizer": {"x": {}}}, tmp_path / "a.pt")
    torch.save({**ref, "checkpointer": {"_saved": []}}, tmp_path / "b.pt")  # ignite single-object + include_self
    torch.save({"network": ref, "epoch": 3}, tmp_path / "c.pt")
    from monai_gmr.evaluation import load_checkpoint as evaluation_load_checkpoint

    for f in ("a.pt", "b.pt", "c.pt"):
        for load in (load_checkpoint, evaluation_load_checkpoint):  # one loader behind both names
            other = torch.nn.Linear(3, 2)
            load(other, tmp_path / f)
            assert torch.equal(other.weight, ref["weight"]), (f, load.__module__)
    torch.save({"optimizer": {"x": {}}}, tmp_path / "d.pt")
    with pytest.raises(KeyError, match="no state dict"):
        load_checkpoint(net, tmp_path / "d.pt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(net, tmp_path / "missing.pt")
    # another network than the one trained (e.g. evaluate.json without the training run's --network_def): the error
    # names the checkpoint and the setting to fix, not only PyTorch's list of missing keys
    with pytest.raises(RuntimeError, match=r"checkpoint '.*a\.pt' does not fit the network Sequential: .*network_def"):
        load_checkpoint(torch.nn.Sequential(torch.nn.Linear(3, 4)), tmp_path / "a.pt")


@pytest.mark.parametrize("content", [b"hello\n", b"PK\x03\x04 cut short", b""])
def test_load_checkpoint_names_a_file_that_is_not_a_checkpoint(tmp_path, content):
    """A text file as --ckpt_path stopped with "KeyError: 101" (an unpickling error), a truncated one with a zip
    reader error: neither named the file."""
    (tmp_path / "model.pt").write_bytes(content)
    with pytest.raises(RuntimeError, match=r"model\.pt' cannot be read as a PyTorch checkpoint"):
        load_checkpoint(torch.nn.Linear(3, 2), tmp_path / "model.pt")


def test_load_checkpoint_prefers_the_given_key_and_unwraps_data_parallel(tmp_path):
    """``key`` is looked up before the other state-dict keys (a checkpoint holding the model and, e.g., an EMA copy
    under "network"), and a ``DataParallel`` wrapper gets the weights without its "module." prefix."""
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    torch.save({"network": b.state_dict(), "model": a.state_dict()}, tmp_path / "two.pt")
    net = torch.nn.Linear(3, 2)
    load_checkpoint(net, tmp_path / "two.pt")  # key="model" (default)
    assert torch.equal(net.weight, a.weight)
    load_checkpoint(net, tmp_path / "two.pt", key="network")
    assert torch.equal(net.weight, b.weight)
    dp = torch.nn.DataParallel(torch.nn.Linear(3, 2))
    assert load_checkpoint(dp, tmp_path / "two.pt") is dp
    assert torch.equal(dp.module.weight, a.weight)


def test_epoch_validation_handler_runs_at_last_epoch():
    from monai.engines import SupervisedEvaluator

    trainer, net, _ = _tiny_trainer(None, max_epochs=5, n=2)
    loader = torch.utils.data.DataLoader([{"image": torch.rand(1, 8, 8), "label": torch.zeros(1, 8, 8)}], batch_size=1)
    evaluator = SupervisedEvaluator(device=torch.device("cpu"), val_data_loader=loader, network=net)
    epochs = []
    from ignite.engine import Events

    evaluator.add_event_handler(Events.STARTED, lambda e: epochs.append(trainer.state.epoch))
    EpochValidationHandler(interval=2, validator=evaluator).attach(trainer)
    trainer.run()
    assert epochs == [2, 4, 5]
    with pytest.raises(ValueError, match="interval"):
        EpochValidationHandler(interval=0)


def test_progress_logger_summary(tmp_path, caplog):
    trainer, _, _ = _tiny_trainer(tmp_path, max_epochs=2, n=4)
    pl = ProgressLogger(interval=1, summary_file=tmp_path / "s" / "summary.json")
    pl.attach(trainer)
    with caplog.at_level("INFO"):
        trainer.run()
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["epochs_completed"] == 2 and summary["iterations_completed"] == 4
    assert summary["start_epoch"] == 0 and summary["resumed"] is False
    assert np.isfinite(summary["final_loss"])
    assert any("ETA" in r.message and "epoch 2/2" in r.message for r in caplog.records)
    with pytest.raises(ValueError, match="interval"):
        ProgressLogger(interval=-1)


def test_rank_seed(monkeypatch):
    assert rank_seed(7) == 7 and rank_seed("7") == 7  # not distributed
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    for rank in (0, 1, 3):
        monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None, r=rank: r)
        assert rank_seed(7) == 7 + rank


def test_run_on_rank0_first_without_dist():
    assert run_on_rank0_first(lambda a, b=1: a + b, 2, b=3) == 5


# ------------------------------------------------------------------------------------------------ writers
def test_atomic_pil_writer(tmp_path):
    from monai.transforms import LoadImage, SaveImage

    Image.fromarray((np.arange(40 * 30 * 3) % 251).astype(np.uint8).reshape(40, 30, 3)).save(tmp_path / "img.png")
    img = LoadImage(image_only=True, ensure_channel_first=True)(str(tmp_path / "img.png"))
    mask = (img[:1] > 100).to(torch.uint8)
    out = tmp_path / "out"
    SaveImage(output_dir=out, output_postfix="seg", output_ext=".png", output_dtype=np.uint8, separate_folder=False,
              print_log=False, writer="monai_gmr.workflows.AtomicPILWriter")(mask)
    prob = img[:1].float() / 255.0
    SaveImage(output_dir=out, output_postfix="prob", output_ext=".tif", output_dtype=np.float32, separate_folder=False,
              print_log=False, writer=atomic_writer_for(".tif"))(prob)
    assert sorted(p.name for p in out.iterdir()) == ["img_prob.tif", "img_seg.png"]
    seg = Image.open(out / "img_seg.png")
    assert seg.size == (30, 40)
    np.testing.assert_array_equal(np.array(seg), (np.array(Image.open(tmp_path / "img.png"))[..., 0] > 100).astype(np.uint8))
    import tifffile

    p = tifffile.imread(out / "img_prob.tif")
    assert p.shape == (40, 30) and p.dtype == np.float32
    assert os.stat(out / "img_seg.png").st_mode & 0o777 == 0o666 & ~current_umask()  # like a normally created file
    assert atomic_writer_for("nii.gz").__name__ == "AtomicNibabelWriter"
    assert atomic_writer_for(".mha").__name__ == "AtomicITKWriter"


def test_atomic_writer_leaves_nothing_on_failure(tmp_path, monkeypatch):
    from monai.data import PILWriter

    def half_write(self, filename, verbose=False, **kwargs):
        Path(filename).write_bytes(b"\x89PNG half")  # a crash in the middle of writing
        raise OSError("disk full")

    monkeypatch.setattr(PILWriter, "write", half_write)
    w = AtomicPILWriter(output_dtype=np.uint8)
    w.set_data_array(torch.zeros(1, 4, 4), channel_dim=0)
    with pytest.raises(OSError, match="disk full"):
        w.write(str(tmp_path / "bad.png"))
    assert list(tmp_path.iterdir()) == []


def test_atomic_writer_refuses_instance_ids_that_wrap_in_the_output_dtype(tmp_path):
    # 70000 instances in a uint16 PNG: astype wrapped id 65536 to 0 (background) and 65537 to 1 (merged) silently
    from monai.transforms import SaveImage

    inst = torch.zeros(1, 8, 8, dtype=torch.int32)
    inst[0, 0, :3] = torch.tensor([65536, 65537, 70000])
    save = SaveImage(output_dir=tmp_path / "out", output_postfix="instance", output_ext=".png", output_dtype=np.uint16,
                     resample=False, separate_folder=False, print_log=False, writer="monai_gmr.workflows.AtomicPILWriter")
    with pytest.raises(RuntimeError, match="do not fit the output dtype uint16"):  # SaveImage wraps the ValueError
        save(inst)
    assert not any((tmp_path / "out").glob("*.png"))
    inst[0, 0, :3] = torch.tensor([1, 2, 65535])  # the whole range of uint16 is written as is
    save(inst)
    (written,) = (tmp_path / "out").glob("*.png")
    assert np.array(Image.open(written)).max() == 65535


def test_atomic_writer_refuses_negative_values_in_an_unsigned_output_dtype(tmp_path):
    """A negative value (e.g. an ignore label -1) in a uint8 output wraps to 255 (a class or nucleus id) silently:
    refused like values above the range, nothing written."""
    from monai.transforms import SaveImage

    lab = torch.zeros(1, 8, 8, dtype=torch.int32)
    lab[0, 0, 0] = -1
    save = SaveImage(output_dir=tmp_path / "out", output_postfix="seg", output_ext=".png", output_dtype=np.uint8,
                     resample=False, separate_folder=False, print_log=False, writer="monai_gmr.workflows.AtomicPILWriter")
    with pytest.raises(RuntimeError, match="do not fit the output dtype uint8"):
        save(lab)
    assert not any((tmp_path / "out").glob("*.png"))


# ------------------------------------------------------------------------------------------------ instances
def _two_touching_discs(size=40):
    yy, xx = np.mgrid[:size, :size]
    a = (yy - 20) ** 2 + (xx - 13) ** 2 <= 64
    b = (yy - 20) ** 2 + (xx - 27) ** 2 <= 64
    return a, b


def test_instance_from_semantic_connected_components():
    sem = np.zeros((20, 20), np.int64)
    sem[2:5, 2:5] = 1
    sem[10:15, 10:15] = 1
    sem[18, 18] = 1  # single pixel, removed by min_size
    inst = instance_from_semantic(sem[None], min_size=2)
    assert inst.dtype == np.int32 and inst.shape == (20, 20)
    assert inst.max() == 2 and inst[18, 18] == 0
    assert len(np.unique(inst[2:5, 2:5])) == 1 and len(np.unique(inst[10:15, 10:15])) == 1
    assert inst[3, 3] != inst[12, 12]
    # min_size removes objects *smaller* than it: the 9-pixel square stays at min_size=9 and goes at 10
    assert instance_from_semantic(sem, min_size=9).max() == 2 and instance_from_semantic(sem, min_size=10).max() == 1
    # connectivity: diagonal neighbours are one object with full connectivity only
    diag = np.eye(4, dtype=np.int64)
    assert instance_from_semantic(diag, connectivity=1).max() == 4 and instance_from_semantic(diag, connectivity=2).max() == 1


def test_instance_from_semantic_boundary_splits_touching():
    a, b = _two_touching_discs()
    fg = a | b
    assert instance_from_semantic(fg.astype(int)).max() == 1  # touching: one component
    from monai_gmr.workflows.nuclei import nucleus_boundaries

    lab = a.astype(np.int64) + 2 * (b & ~a)
    sem = fg.astype(np.int64)
    sem[nucleus_boundaries(lab)] = 2
    inst = instance_from_semantic(sem, boundary_class=2)
    assert inst.max() == 2
    assert np.array_equal(inst > 0, fg)  # boundary pixels re-assigned, nothing lost
    assert inst[20, 10] != inst[20, 30]
    ws = instance_from_semantic(fg.astype(int), method="watershed", min_distance=5)
    assert ws.max() == 2 and ws[20, 10] != ws[20, 30]
    with pytest.raises(ValueError, match="method"):
        instance_from_semantic(sem, method="magic")
    with pytest.raises(ValueError, match="shape"):
        instance_from_semantic(np.zeros((2, 3, 4, 5)))


def test_boundary_pixels_stay_in_their_own_nucleus_and_edge_nuclei_survive_watershed():
    # a nucleus predicted as boundary only must not join a distant nucleus's id
    sem = np.zeros((12, 12), np.int64)
    sem[1:6, 1:6] = 2
    sem[2:5, 2:5] = 1
    sem[8:10, 8:10] = 2
    for conn in (1, 2):
        inst = instance_from_semantic(sem, boundary_class=2, connectivity=conn)
        assert inst.max() == 2 and inst[8, 8] != inst[3, 3] and np.array_equal(inst > 0, sem > 0)
        assert len(np.unique(inst[1:6, 1:6])) == 1 and len(np.unique(inst[8:10, 8:10])) == 1
    # watershed keeps nuclei touching the image border (peak_local_max drops border seeds by default)
    edge = np.zeros((10, 10), np.int64)
    edge[0:2, 0:2] = 1
    edge[0:3, 5:8] = 1
    edge[6:9, 2:5] = 1
    ws = instance_from_semantic(edge, method="watershed")
    assert ws.max() == 3 and np.array_equal(ws > 0, edge > 0)


def test_instance_maskd_keeps_meta():
    from monai.data import MetaTensor

    sem = MetaTensor(torch.zeros(1, 10, 10), meta={"filename_or_obj": "/x/img07.png"})
    sem[0, 2:4, 2:4] = 1
    out = InstanceMaskd("pred", output_key="instance")({"pred": sem})
    assert out["instance"].shape == (1, 10, 10)
    assert out["instance"].meta["filename_or_obj"] == "/x/img07.png"
    assert int(out["instance"].max()) == 1
    with pytest.raises(ValueError, match="output_key"):
        InstanceMaskd(["a", "b"], output_key="c")


# ------------------------------------------------------------------------------------------------ datalists
def _png(path, shape, channels=3):
    arr = np.zeros((*shape, channels) if channels > 1 else shape, np.uint8)
    Image.fromarray(arr).save(path)
    return str(path)


def test_check_datalist_errors_name_the_file(tmp_path):
    good = {"image": _png(tmp_path / "a.png", (16, 16)), "label": _png(tmp_path / "a_l.png", (16, 16), 1)}
    assert check_datalist([good]) == [good]
    with pytest.raises(ValueError, match="empty"):
        check_datalist([])
    bad_size = {"image": good["image"], "label": _png(tmp_path / "b_l.png", (16, 12), 1)}
    with pytest.raises(ValueError, match=r"mismatch.*b_l\.png"):
        check_datalist([good, bad_size])
    (tmp_path / "broken.png").write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match=r"cannot read image file .*broken\.png"):
        check_datalist([{"image": str(tmp_path / "broken.png"), "label": good["label"]}])
    with pytest.raises(FileNotFoundError, match="nope.png"):
        check_datalist([{"image": str(tmp_path / "nope.png"), "label": good["label"]}])
    with pytest.raises(ValueError, match="no 'label'"):
        check_datalist([{"image": good["image"]}])


def test_list_images(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_images(tmp_path / "x")
    with pytest.raises(ValueError, match="no image"):
        list_images(tmp_path)
    _png(tmp_path / "b.PNG", (4, 4))
    _png(tmp_path / "a.png", (4, 4))
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "._a.png").write_bytes(b"\x00\x05\x16\x07Mac OS X")  # a macOS resource fork: unreadable as PNG
    assert [Path(p).name for p in list_images(tmp_path)] == ["a.png", "b.PNG"]


def test_list_images_of_a_file_says_it_is_a_file(tmp_path):
    """--input_dir tile.png (one image instead of its folder) failed as "input folder 'tile.png' does not exist",
    although the file was there."""
    _png(tmp_path / "a.png", (4, 4))
    with pytest.raises(NotADirectoryError, match="a.png' is a file, not a folder"):
        list_images(tmp_path / "a.png")


# ------------------------------------------------------------------------------------------------ evaluation summary
def test_summarize_evaluation(tmp_path):
    from monai_gmr.evaluation import RobustnessResult

    res = RobustnessResult(
        model_name="m", task="segmentation", metrics=["dice"], angles=[0.0, 90.0, 45.0],
        flips=["h"], per_angle={"dice": [0.8, 0.8, 0.6]}, per_flip={"h": {"dice": 0.8}}, n_images=2,
    )

    class _Ev:
        class state:  # noqa: N801
            metrics = {"val_mean_dice": 0.8, "not_a_number": [1, 2]}

    out = summarize_evaluation(tmp_path / "m.json", evaluator=_Ev, robustness=res, report_paths={"json": "r.json"}, split="test")
    saved = json.loads((tmp_path / "m.json").read_text())
    assert saved["metrics"] == {"val_mean_dice": 0.8}
    assert saved["robustness"]["summary"]["dice"]["worst_angle"] == 45.0
    assert saved["robustness"]["summary"]["dice"]["at_0"] == pytest.approx(0.8)
    assert "0.8000" in out["table"] and saved["split"] == "test"


def test_key_metric_state_carries_the_evaluator_best(tmp_path):
    """A resumed run's evaluator starts from the best metric/epoch saved before the kill, not from "none yet"."""
    from types import SimpleNamespace

    from ignite.engine import State

    def saver(d):
        return AtomicCheckpointSaver(save_dir=str(d), save_dict={"model": torch.nn.Linear(2, 2)}, save_key_metric=True,
                                     key_metric_filename="model.pt")  # fmt: skip

    def evaluator():
        ev = SimpleNamespace(state=State())
        ev.state.best_metric, ev.state.best_metric_epoch = -1, -1  # MONAI Workflow's "no best yet"
        return ev

    ev = evaluator()
    state = KeyMetricState(saver(tmp_path / "a"), ev)
    assert "best_metric" not in state.state_dict()  # nothing validated yet
    ev.state.best_metric, ev.state.best_metric_epoch = 0.9, 5
    sd = state.state_dict()
    assert sd["best_metric"] == 0.9 and sd["best_metric_epoch"] == 5
    sd = torch.load(_save(tmp_path / "s.pt", sd), weights_only=True)  # through a checkpoint file
    ev2 = evaluator()
    KeyMetricState(saver(tmp_path / "b"), ev2).load_state_dict(sd)
    assert (ev2.state.best_metric, ev2.state.best_metric_epoch) == (0.9, 5)
    ev3 = evaluator()  # a checkpoint written before the evaluator was tracked: the evaluator is left alone
    KeyMetricState(saver(tmp_path / "c"), ev3).load_state_dict({"saved": [[0.5, "model.pt"]]})
    assert (ev3.state.best_metric, ev3.state.best_metric_epoch) == (-1, -1)
    with pytest.raises(TypeError, match="evaluator"):
        KeyMetricState(saver(tmp_path / "d"), object())


def _save(path, obj):
    torch.save(obj, path)
    return path


def _run_with_saver(d, epochs, resume, seed=0, n=4):
    trainer, net, opt = _tiny_trainer(None, max_epochs=epochs, n=n)
    torch.manual_seed(seed)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=1e-3)
    from ignite.engine import Events

    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: sched.step())
    sd = {"model": net, "optimizer": opt, "lr_scheduler": sched, "trainer": trainer}
    saver = AtomicCheckpointSaver(save_dir=str(d), save_dict=sd, save_interval=1, n_saved=2)
    saver.attach(trainer)
    pl = ProgressLogger(interval=0, summary_file=Path(d) / "summary.json")
    pl.attach(trainer)
    lrs = []
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: lrs.append(opt.param_groups[0]["lr"]))
    path = attach_resume(trainer, resume, d, sd, saver=saver)
    trainer.run()
    return path, pl.summary, sorted(p.name for p in Path(d).glob("checkpoint_*.pt")), lrs


def test_fresh_run_moves_an_earlier_runs_checkpoints_aside(tmp_path):
    """resume=False: an older, longer run's checkpoints must not be what a later resume picks up."""
    _run_with_saver(tmp_path, 4, False)  # leaves epochs 3, 4
    _, _, files, _ = _run_with_saver(tmp_path, 2, False, seed=1)
    assert files == ["checkpoint_epoch=1.pt", "checkpoint_epoch=2.pt"]
    aside = list(tmp_path.glob("previous_run_*/checkpoint_epoch=*.pt"))
    assert sorted(p.name for p in aside) == ["checkpoint_epoch=3.pt", "checkpoint_epoch=4.pt"]
    assert Path(find_latest_checkpoint(tmp_path)).name == "checkpoint_epoch=2.pt"
    _run_with_saver(tmp_path, 2, False)  # a third fresh run within the same second keeps both earlier sets
    assert len(list(tmp_path.glob("previous_run_*/checkpoint_epoch=*.pt"))) == 4


def test_resume_prunes_only_its_own_checkpoints(tmp_path):
    """Another saver's files in the same folder (other prefix/kind) are neither pruned nor taken as this saver's."""
    _run_with_saver(tmp_path, 3, False)
    for n in (8, 12):
        (tmp_path / f"iter_checkpoint_iteration={n}.pt").write_bytes(b"x")
    path, _, files, _ = _run_with_saver(tmp_path, 4, True)
    assert Path(path).name == "checkpoint_epoch=3.pt"
    assert files == ["checkpoint_epoch=3.pt", "checkpoint_epoch=4.pt"]
    assert sorted(p.name for p in tmp_path.glob("iter_*")) == ["iter_checkpoint_iteration=12.pt", "iter_checkpoint_iteration=8.pt"]


def test_resume_keeps_pruning_and_the_configured_schedule(tmp_path):
    """After a resume n_saved still prunes the older files, and a longer run keeps its cosine horizon (T_max)
    instead of the checkpoint's (the learning rate would climb back after the old end)."""
    _run_with_saver(tmp_path, 3, False)
    path, summary, files, lrs = _run_with_saver(tmp_path, 6, True)
    assert Path(path).name == "checkpoint_epoch=3.pt"
    assert files == ["checkpoint_epoch=5.pt", "checkpoint_epoch=6.pt"]
    assert summary["resumed"] is True and summary["start_epoch"] == 3
    # epochs 4-6 follow the configured 6-epoch cosine, as in an uninterrupted run (not eta_min, the 3-epoch end)
    _, _, _, full = _run_with_saver(tmp_path / "full", 6, False)
    assert len(lrs) == 3 and lrs == pytest.approx(full[3:], abs=1e-9) and lrs[0] > 2e-3
    # resuming from the final checkpoint: nothing runs, and the summary says it resumed
    _, summary, files, lrs = _run_with_saver(tmp_path, 6, True)
    assert lrs == [] and files == ["checkpoint_epoch=5.pt", "checkpoint_epoch=6.pt"]
    assert summary["resumed"] is True and summary["start_epoch"] == 6 and summary["epochs_completed"] == 6


def test_resume_prunes_the_oldest_of_more_than_n_saved_checkpoints(tmp_path):
    """A folder holding more interval checkpoints than ``n_saved`` (e.g. a run with a larger ``n_saved``, or one
    killed between a save and its pruning): the resume keeps the newest and deletes the oldest; keeping the oldest
    left epoch 2 after the next save (the newest files are what a later resume needs)."""
    import shutil

    _run_with_saver(tmp_path, 3, False)  # epochs 2, 3
    shutil.copy(tmp_path / "checkpoint_epoch=2.pt", tmp_path / "checkpoint_epoch=1.pt")  # a third, older file
    path, _, files, _ = _run_with_saver(tmp_path, 4, True)
    assert Path(path).name == "checkpoint_epoch=3.pt"
    assert files == ["checkpoint_epoch=3.pt", "checkpoint_epoch=4.pt"]


def test_validation_at_start_runs_after_the_resume_loader(tmp_path):
    """exec_at_start validates the restored weights, not the fresh ones (the loader is attached later)."""
    from monai.engines import SupervisedEvaluator

    first, net0, opt0 = _tiny_trainer(None, max_epochs=2, n=4)
    AtomicCheckpointSaver(save_dir=str(tmp_path), save_dict={"model": net0, "optimizer": opt0, "trainer": first},
                          save_interval=1).attach(first)
    first.run()
    trainer, net, opt = _tiny_trainer(None, max_epochs=3, n=4)
    saved = torch.load(tmp_path / "checkpoint_epoch=2.pt", weights_only=False)["model"]["weight"]
    loader = torch.utils.data.DataLoader([{"image": torch.rand(1, 8, 8), "label": torch.zeros(1, 8, 8)}], batch_size=1)
    evaluator = SupervisedEvaluator(device=torch.device("cpu"), val_data_loader=loader, network=net)
    seen = []
    from ignite.engine import Events

    evaluator.add_event_handler(Events.COMPLETED, lambda e: seen.append((e.state.epoch, torch.equal(net.weight, saved))))
    EpochValidationHandler(interval=5, validator=evaluator, exec_at_start=True).attach(trainer)
    attach_resume(trainer, True, tmp_path, {"model": net, "optimizer": opt, "trainer": trainer})
    trainer.run()
    # once at the start (the restored weights, labelled with their epoch), once after the last epoch
    assert seen == [(2, True), (3, False)]


def test_boundary_arm_stays_with_its_own_nucleus():
    """A boundary arm of nucleus A that ends next to nucleus B joins A (the nearest seed of its own region)."""
    sem = np.zeros((12, 20), np.int64)
    sem[2:7, 1:6] = 2
    sem[3:6, 2:5] = 1  # A: interior + boundary ring
    sem[4, 6:13] = 2  # A's boundary arm towards B
    sem[2:7, 14:19] = 2
    sem[3:6, 15:18] = 1  # B, a separate region (column 13 is background)
    inst = instance_from_semantic(sem, boundary_class=2)
    assert inst.max() == 2 and inst[4, 12] == inst[4, 3] != inst[4, 16]
    assert np.array_equal(inst > 0, sem > 0)


def test_checkpoint_saver_creates_its_folder_when_it_saves(tmp_path):
    """Building the saver (done while a bundle's handlers are parsed, before every input is checked) creates no
    folder; the first checkpoint does."""
    trainer, net, _ = _tiny_trainer(tmp_path, max_epochs=1)
    ckpt_dir = tmp_path / "out" / "models"
    saver = AtomicCheckpointSaver(save_dir=str(ckpt_dir), save_dict={"model": net}, save_interval=1, n_saved=1)
    best = AtomicCheckpointSaver(save_dir=str(ckpt_dir), save_dict={"model": net}, save_key_metric=True,
                                 key_metric_filename="model.pt")  # fmt: skip
    assert not ckpt_dir.exists()
    saver.attach(trainer)
    trainer.run()
    assert [p.name for p in ckpt_dir.iterdir()] == ["model_epoch=1.pt"]  # ignite names a single object's file
    assert saver._interval_checkpoint.last_checkpoint == ckpt_dir / "model_epoch=1.pt"
    assert best._key_metric_checkpoint.save_handler._atomic is True


def test_summarize_evaluation_writes_strict_json_nan_as_null(tmp_path):
    """metrics.json of a single-class split: the ROC-AUC (and robustness values) are NaN; the file must be strict
    JSON (``null``), which ``json.loads(..., parse_constant=...)``, JavaScript and jq accept."""
    from monai_gmr.evaluation import RobustnessResult

    res = RobustnessResult(
        model_name="m", task="classification", metrics=["auc"], angles=[0.0, 90.0], flips=["h"],
        per_angle={"auc": [float("nan"), float("nan")]}, per_flip={"h": {"auc": float("nan")}}, n_images=2,
    )  # fmt: skip

    class _Ev:
        class state:  # noqa: N801
            metrics = {"val_auc": float("nan"), "val_acc": np.float64(0.5)}

    summarize_evaluation(tmp_path / "metrics.json", evaluator=_Ev, robustness=res, split="test")

    def refuse(token):
        raise ValueError(f"not JSON: {token}")

    saved = json.loads((tmp_path / "metrics.json").read_text(), parse_constant=refuse)
    assert saved["metrics"] == {"val_auc": None, "val_acc": 0.5}
    assert saved["robustness"]["per_flip"] == {"h": {"auc": None}}
    assert saved["robustness"]["summary"]["auc"]["at_0"] is None


def test_checkpoint_saver_on_another_rank_keeps_rank0_folders(tmp_path, monkeypatch):
    """Under torchrun every rank builds the saver; ignite creates the folders on rank 0 only. Rank 1 listed the
    output folder as missing, then found it (created meanwhile by rank 0, still empty) and removed it, while rank 0
    was about to write there: the 2-process bundle test failed now and then."""
    import ignite.distributed as idist

    out = tmp_path / "run"
    real = common.missing_dirs

    def missing_then_rank0_creates(path):
        found = real(path)
        (out / "models").mkdir(parents=True)  # rank 0, at the same time
        return found

    monkeypatch.setattr(common, "missing_dirs", missing_then_rank0_creates)
    monkeypatch.setattr(idist, "get_rank", lambda: 1)
    AtomicCheckpointSaver(save_dir=str(out / "models"), save_dict={"model": torch.nn.Linear(2, 2)}, save_interval=1)
    assert (out / "models").is_dir()


@pytest.mark.parametrize("kind", ["best", "interval"])
def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch, kind):
    """ignite removes the file a new checkpoint replaces *before* writing the new one; for the best model (one
    fixed name, ``model.pt``) a save that fails (disk full, kill while writing the temporary file) left no
    ``model.pt`` at all, and an interval save lost the older of the two kept checkpoints. The old files must stay
    until the new one is in place."""
    from ignite.engine import Engine, Events

    net = torch.nn.Linear(1, 1, bias=False)
    engine = Engine(lambda e, b: None)

    @engine.on(Events.EPOCH_COMPLETED)
    def _validation_result(e):  # new weights and a better score every epoch
        with torch.no_grad():
            net.weight.fill_(float(e.state.epoch))
        e.state.metrics = {"val_key": 0.1 * e.state.epoch}
        e.state.key_metric_name = "val_key"

    if kind == "best":
        saver = AtomicCheckpointSaver(save_dir=str(tmp_path), save_dict={"model": net}, save_key_metric=True,
                                      key_metric_filename="model.pt")  # fmt: skip
    else:
        saver = AtomicCheckpointSaver(save_dir=str(tmp_path), save_dict={"model": net, "engine": engine},
                                      save_interval=1, n_saved=2)  # fmt: skip
    saver.attach(engine)
    real_save = torch.save

    def disk_full_at_epoch_3(obj, f, *args, **kwargs):
        if engine.state.epoch == 3:
            f.write(b"partial")
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full_at_epoch_3)
    with pytest.raises(OSError, match="No space left"):
        engine.run([0], max_epochs=3)
    monkeypatch.setattr(torch, "save", real_save)
    if kind == "best":
        assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
        state = torch.load(tmp_path / "model.pt", weights_only=True)
        assert float(state["weight"]) == 2.0  # epoch 2, the best saved before the failure
    else:
        assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_epoch=1.pt", "checkpoint_epoch=2.pt"]


def test_fresh_run_moves_the_earlier_runs_best_model_aside_too(tmp_path):
    """resume=False moved an earlier run's interval checkpoints aside but left its models/model.pt, which the new
    run's first validation overwrote: the earlier run's best model was lost, and a user who then moved the earlier
    checkpoints back to resume it got the new run's weights in model.pt under the earlier run's best score (the
    tracking list travels in the checkpoint). model.pt goes into the same previous_run folder now."""
    trainer, net, opt = _tiny_trainer(tmp_path, max_epochs=1)
    best = AtomicCheckpointSaver(save_dir=str(tmp_path), save_dict={"model": net}, save_key_metric=True,
                                 key_metric_filename="model.pt")  # fmt: skip
    _save(tmp_path / "checkpoint_epoch=3.pt", {"x": 3})
    _save(tmp_path / "model.pt", {"x": "earlier best"})
    (tmp_path / "notes.txt").write_text("mine")
    load = {"model": net, "trainer": trainer, "best_metric_state": KeyMetricState(best)}
    assert attach_resume(trainer, False, tmp_path, load) is None
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["notes.txt"]
    (aside,) = tmp_path.glob("previous_run_*")
    assert sorted(p.name for p in aside.iterdir()) == ["checkpoint_epoch=3.pt", "model.pt"]
    assert torch.load(aside / "model.pt", weights_only=True) == {"x": "earlier best"}
    # a first run (nothing to move) and a best model alone are handled too
    _save(tmp_path / "model.pt", {"x": "alone"})
    attach_resume(trainer, False, tmp_path, load)
    assert not (tmp_path / "model.pt").exists() and len(list(tmp_path.glob("previous_run_*"))) == 2


def test_compile_prepare_batch_returns_plain_tensors_that_monai_can_rebuild_after():
    """MONAI 1.6.1's ``SupervisedTrainer(compile=True)`` rebuilds MetaTensors from a collated batch's metadata after
    the step; with two or more images carrying ``original_channel_dim`` that fails. ``compile_prepare_batch`` gives
    the same values as plain tensors (which MONAI leaves alone)."""
    from monai.data import MetaTensor, list_data_collate
    from monai.engines import default_prepare_batch

    from monai_gmr.workflows import compile_prepare_batch

    items = [{"image": MetaTensor(torch.rand(3, 4, 4), meta={"original_channel_dim": 0}),
              "label": MetaTensor(torch.ones(1, 4, 4), meta={"original_channel_dim": 0})} for _ in range(2)]  # fmt: skip
    batch = list_data_collate(items)
    image, label = default_prepare_batch(batch)
    with pytest.raises(RuntimeError, match="ambiguous"):  # what MONAI's compile path does with these metadata
        MetaTensor(image.as_tensor(), meta=image.meta)
    plain_image, plain_label = compile_prepare_batch(batch, device="cpu")
    assert type(plain_image) is torch.Tensor and type(plain_label) is torch.Tensor
    assert torch.equal(plain_image, image.as_tensor()) and torch.equal(plain_label, label.as_tensor())


def test_compile_prepare_batch_keeps_the_shape_of_monais_result():
    """An image-only batch gives ``(image, None)``, a GAN batch of "reals" one tensor (not iterated into images)."""
    from monai.data import MetaTensor

    from monai_gmr.workflows import compile_prepare_batch

    reals = MetaTensor(torch.rand(2, 3, 4, 4))
    out = compile_prepare_batch({"reals": reals})
    assert type(out) is torch.Tensor and torch.equal(out, reals.as_tensor())
    image, label = compile_prepare_batch({"image": MetaTensor(torch.rand(2, 3, 4, 4))})
    assert type(image) is torch.Tensor and image.shape == (2, 3, 4, 4) and label is None


def test_maybe_compile_is_the_module_itself_when_off_and_refuses_bad_settings_by_name():
    from monai_gmr.workflows import maybe_compile

    net = torch.nn.Linear(3, 2)
    for off in (False, "false", "off", 0):
        assert maybe_compile(net, off) is net
    assert maybe_compile(net, False, {"backend": "aot_eager"}) is net
    with pytest.raises(ValueError, match="^compile must be a boolean"):
        maybe_compile(net, "maybe")
    for bad in ("backend=aot_eager", {1: "x"}, ["backend"]):
        with pytest.raises(ValueError, match="^compile_kwargs must be a mapping"):
            maybe_compile(net, True, bad)
    with pytest.raises(ValueError, match="^compile_kwargs must be a mapping"):  # checked when off too
        maybe_compile(net, False, "backend=aot_eager")


@pytest.mark.filterwarnings("ignore:Dynamo detected a call")  # MetaTensor's lru_cache, traced by the failing call
def test_maybe_compile_matches_eager_on_tensors_and_metatensor_batches_and_keeps_the_modules_state(tmp_path):
    """On, the network runs through ``torch.compile`` (aot_eager: no C compiler) with the eager outputs, also for a
    collated MetaTensor batch of 2, which the compiled module alone refuses with torch 2.13 / MONAI 1.6.1; ``.eval()``,
    ``.to()``, ``parameters()`` and ``state_dict()`` / ``load_state_dict()`` act on the original module, with its keys."""
    from monai.data import MetaTensor, list_data_collate

    from monai_gmr.workflows import CompiledModule, load_checkpoint, maybe_compile

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
    c = maybe_compile(net, "true", {"backend": "aot_eager"})
    assert isinstance(c, CompiledModule) and isinstance(c, torch.nn.Module) and c.module is net
    assert isinstance(c.compiled, torch._dynamo.eval_frame.OptimizedModule)
    assert list(c.state_dict()) == list(net.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert [id(p) for p in c.parameters()] == [id(p) for p in net.parameters()]
    assert c.eval() is c and not net.training and not c.training
    c.train()
    assert net.training
    net.eval()
    assert not c.training and c.to("cpu") is c
    net.num_classes = 2
    assert c.num_classes == 2  # other attributes: the module's

    items = [{"image": MetaTensor(torch.rand(3, 12, 12), meta={"original_channel_dim": -1})} for _ in range(2)]
    batch = list_data_collate(items)["image"]
    assert isinstance(batch, MetaTensor) and batch.shape[0] == 2
    with torch.no_grad():
        with pytest.raises(Exception, match="dispatch"):  # why the wrapper hands the compiled module plain tensors
            c.compiled(batch)
        for x in (batch.as_tensor(), batch):
            out, ref = c(x), net(x)
            assert type(out) is torch.Tensor
            torch.testing.assert_close(out, torch.as_tensor(ref), atol=1e-5, rtol=0)

    # weights loaded later (into the wrapper or the plain module; a checkpoint without prefixes) are used
    new = {k: torch.randn_like(v) for k, v in net.state_dict().items()}
    c.load_state_dict(new)
    assert torch.equal(net[0].weight, new["0.weight"])
    x = torch.rand(1, 3, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(c(x), net(x), atol=1e-5, rtol=0)
    torch.save({"model": {k: v + 1 for k, v in new.items()}}, tmp_path / "m.pt")
    load_checkpoint(c, tmp_path / "m.pt")
    assert torch.equal(net[0].weight, new["0.weight"] + 1)


@pytest.mark.filterwarnings("ignore:Dynamo detected a call")  # MetaTensor's lru_cache, traced by the failing call
def test_compiled_module_hands_keyword_metatensors_over_as_plain_tensors():
    """Keyword inputs reach the compiled module as plain tensors too (the test above passes only positional ones): a
    collated MetaTensor batch passed as ``c(x=batch)`` gives the eager output instead of the compiled module's
    "dispatch" error."""
    from monai.data import MetaTensor, list_data_collate

    from monai_gmr.workflows import maybe_compile

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x)

    torch.manual_seed(0)
    net = Net().eval()
    c = maybe_compile(net, True, {"backend": "aot_eager"})
    items = [{"image": MetaTensor(torch.rand(3, 8, 8), meta={"original_channel_dim": -1})} for _ in range(2)]
    batch = list_data_collate(items)["image"]
    assert isinstance(batch, MetaTensor)
    with torch.no_grad():
        out = c(x=batch)
        assert type(out) is torch.Tensor
        torch.testing.assert_close(out, torch.as_tensor(net(x=batch)), atol=1e-5, rtol=0)


def test_check_datalist_refuses_a_16_bit_colour_png(tmp_path):
    """MONAI's PNG reader (PIL) keeps only the high byte of a 16-bit RGB PNG: 12-bit camera data (0..4095) was read as
    a nearly black 0..15 image, which passed every check (no value above 255) and was segmented silently wrong."""
    from tests.data.test_prepare_nuclei import _png16

    rgb = np.random.default_rng(0).integers(0, 4096, (8, 9, 3))
    _png16(tmp_path / "cam.png", rgb)
    with pytest.raises(ValueError, match=r"item 0: image file '.*cam\.png' is a 16-bit colour PNG"):
        check_datalist([{"image": str(tmp_path / "cam.png")}], keys=("image",))
    _png16(tmp_path / "grey.png", rgb[..., 0])  # 16-bit grey is read at full depth: not refused here
    Image.fromarray(rgb.astype(np.uint8)).save(tmp_path / "rgb8.png")
    assert len(check_datalist([{"image": str(tmp_path / p)} for p in ("grey.png", "rgb8.png")], keys=("image",))) == 2


def test_resume_skips_a_truncated_latest_checkpoint(tmp_path, caplog):
    """A newest checkpoint cut short outside the atomic saver (a kill during a copy, a full disk) stopped the resumed
    run at its start with torch's bare "failed finding central directory", naming no file. It is skipped with a
    warning now, the run resumes from the previous one and its next save replaces the broken file; when no
    checkpoint can be read the error names the files."""
    _run_with_saver(tmp_path, 2, False)  # leaves epochs 1, 2
    broken = tmp_path / "checkpoint_epoch=2.pt"
    broken.write_bytes(broken.read_bytes()[:100])
    with caplog.at_level("WARNING", logger=common.logger.name):
        path, summary, files, lrs = _run_with_saver(tmp_path, 3, True)
    assert Path(path).name == "checkpoint_epoch=1.pt" and "checkpoint_epoch=2.pt" in caplog.text
    assert summary["start_epoch"] == 1 and len(lrs) == 2  # epochs 2 and 3 trained again
    assert files == ["checkpoint_epoch=2.pt", "checkpoint_epoch=3.pt"]
    torch.load(broken, weights_only=True)  # rewritten by the resumed run
    for p in tmp_path.glob("checkpoint_epoch=*.pt"):
        p.write_bytes(b"")
    trainer, net, _ = _tiny_trainer(None, max_epochs=5)
    with pytest.raises(RuntimeError, match=r"checkpoint_epoch=3\.pt, checkpoint_epoch=2\.pt"):
        attach_resume(trainer, True, tmp_path, {"model": net, "trainer": trainer})


def test_resume_errors_name_the_checkpoint(tmp_path):
    """Resuming with another network (or with epochs below the checkpoint's) stopped with MONAI's/torch's message
    ("Error(s) in loading state_dict for Conv2d", "Epoch count (2) in checkpoint is larger than ..."), which names
    neither the file nor what to do."""
    _run_with_saver(tmp_path, 2, False)
    ckpt = str(tmp_path / "checkpoint_epoch=2.pt")
    trainer, _, _ = _tiny_trainer(None, max_epochs=3, n=2)
    other = torch.nn.Conv2d(1, 2, 5, padding=2)
    attach_resume(trainer, True, tmp_path, {"model": other, "trainer": trainer})
    with pytest.raises(RuntimeError, match=rf"cannot resume from {re.escape(repr(ckpt))}: .*size mismatch.*another network") as e:
        trainer.run()
    assert "Error(s) in loading state_dict" in str(e.value.__cause__)
    trainer, net, _ = _tiny_trainer(None, max_epochs=1, n=2)
    attach_resume(trainer, True, tmp_path, {"model": net, "trainer": trainer})
    with pytest.raises(ValueError, match=rf"{re.escape(repr(ckpt))}: it was saved after epoch 2, beyond this run's epochs \(1\)"):
        trainer.run()


def test_resume_keeps_the_configured_epoch_length(tmp_path):
    """ignite restores the checkpoint's epoch_length with the trainer state: after the training data doubled (or
    with another epoch_length), every resumed epoch silently ran the old number of iterations, half the data."""
    from ignite.engine import Events

    _run_with_saver(tmp_path, 2, False, n=4)  # 2 iterations per epoch
    trainer, net, opt = _tiny_trainer(None, max_epochs=4, n=8)  # 4 iterations per epoch now
    seen = []
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: seen.append((e.state.epoch, e.state.iteration)))
    attach_resume(trainer, True, tmp_path, {"model": net, "optimizer": opt, "trainer": trainer})
    trainer.run()
    assert trainer.state.epoch_length == 4 and seen == [(3, 12), (4, 16)]


def _best_model_run(d, scores, max_epochs, resume):
    """Trainer validating every epoch (score ``scores[epoch]``, weights = score), best model ``model.pt``, interval
    checkpoints every 2 epochs; returns the evaluator."""
    from ignite.engine import Engine, Events

    net = torch.nn.Linear(1, 1, bias=False)
    trainer, evaluator = Engine(lambda e, b: None), Engine(lambda e, b: None)
    best = AtomicCheckpointSaver(save_dir=str(d), save_dict={"model": net}, save_key_metric=True,
                                 key_metric_filename="model.pt")  # fmt: skip
    score = {}

    @evaluator.on(Events.EPOCH_COMPLETED)  # before the saver, as MONAI's metrics
    def _metric(v):
        v.state.metrics, v.state.key_metric_name = {"k": score["k"]}, "k"

    best.attach(evaluator)

    @trainer.on(Events.EPOCH_COMPLETED)
    def _validate(e):
        with torch.no_grad():
            net.weight.fill_(scores[e.state.epoch])
        score["k"] = scores[e.state.epoch]
        evaluator.run([0], max_epochs=1)

    state = {"model": net, "trainer": trainer, "best_metric_state": KeyMetricState(best, evaluator)}
    saver = AtomicCheckpointSaver(save_dir=str(d), save_dict=state, save_interval=2, n_saved=2)
    saver.attach(trainer)
    attach_resume(trainer, resume, d, state, saver=saver)
    trainer.run([0], max_epochs=max_epochs)


def test_resume_keeps_a_best_model_saved_after_the_checkpoint(tmp_path):
    """model.pt saved after the newest interval checkpoint (ckpt_interval 2, validation every epoch; or a kill between
    a validation and its epoch's checkpoint): the resumed run knew only the checkpoint's older best (0.6) and
    replaced the better model.pt (0.9) with a worse one (0.7)."""
    _best_model_run(tmp_path, {1: 0.5, 2: 0.6, 3: 0.9}, 3, False)  # checkpoint at epoch 2, model.pt at epoch 3
    _best_model_run(tmp_path, {3: 0.7, 4: 0.65}, 4, True)  # resumed at 2: epoch 3 again scores 0.7 < 0.9
    assert float(torch.load(tmp_path / "model.pt", weights_only=True)["weight"]) == pytest.approx(0.9)
    _best_model_run(tmp_path, {1: 0.3}, 1, False)  # a fresh run moves model.pt and its record aside together
    assert float(torch.load(tmp_path / "model.pt", weights_only=True)["weight"]) == pytest.approx(0.3)
    assert json.loads((tmp_path / "model.pt.json").read_text())["saved"][0][0] == pytest.approx(0.3)
    (aside,) = tmp_path.glob("previous_run_*")
    assert sorted(p.name for p in aside.iterdir()) == ["checkpoint_epoch=2.pt", "checkpoint_epoch=4.pt", "model.pt", "model.pt.json"]


def test_a_fresh_run_that_fails_leaves_no_earlier_run_summary(tmp_path):
    """A fresh run (not resumed) in an output folder with an earlier run's train_summary.json moved the earlier
    checkpoints aside but kept its summary: when the new run failed or was killed, the folder held the new run's
    checkpoints beside the earlier run's summary (its epochs, best metric). The summary is now removed when a run
    starts from scratch; a resumed run keeps it until its own replaces it."""
    from ignite.engine import Events

    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"epochs_completed": 100, "best_metric": 0.9}))
    trainer, _, _ = _tiny_trainer(tmp_path, max_epochs=2, n=4)
    ProgressLogger(interval=0, summary_file=summary).attach(trainer)

    def fail(engine):
        raise RuntimeError("killed")

    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=1), fail)
    with pytest.raises(RuntimeError, match="killed"):
        trainer.run()
    assert not summary.exists()


def test_distributed_sampler_names_a_split_too_small_to_shard():
    """multi_gpu_train.json with fewer validation items than processes stopped with MONAI's "the dataset length is
    less than the number of participating ranks." (no split, no numbers); the message now names the split and both."""
    from monai.data import DistributedSampler

    from monai_gmr.workflows import distributed_sampler

    with pytest.raises(ValueError, match=r"validation split has 1 item\(s\) but 2 processes.*--nproc_per_node"):
        distributed_sampler([0], "validation", even_divisible=False, shuffle=False, num_replicas=2, rank=1)
    s = distributed_sampler(list(range(5)), "validation", even_divisible=False, shuffle=False, num_replicas=2, rank=1)
    assert isinstance(s, DistributedSampler) and list(s) == [1, 3]
    # training repeats items to shard evenly (MONAI's even_divisible=True): a short split is fine there
    assert list(distributed_sampler([0], "training", shuffle=False, num_replicas=2, rank=1)) == [0]


@pytest.mark.parametrize("shuffle", [False, True])
def test_distributed_sampler_allow_empty_gives_every_item_to_one_process(shuffle):
    """multi_gpu_inference.json: with ``allow_empty`` every item goes to exactly one process, also with fewer items
    than processes (the processes beyond the last item get an empty shard instead of MONAI's refusal)."""
    from monai_gmr.workflows import distributed_sampler

    for n, world in ((1, 2), (2, 3), (3, 2), (5, 4), (6, 3), (0, 2)):
        shards = [list(distributed_sampler(list(range(n)), "inference", even_divisible=False, shuffle=shuffle,
                                           allow_empty=True, num_replicas=world, rank=r)) for r in range(world)]  # fmt: skip
        assert sorted(i for shard in shards for i in shard) == list(range(n)), (n, world, shards)
        assert [len(shard) for shard in shards] == [len(range(r, n, world)) for r in range(world)], (n, world, shards)
        for r, shard in enumerate(shards):
            sampler = distributed_sampler(list(range(n)), "inference", even_divisible=False, shuffle=shuffle,
                                          allow_empty=True, num_replicas=world, rank=r)  # fmt: skip
            assert len(sampler) == len(shard)
    # without allow_empty a short split is still refused by name
    with pytest.raises(ValueError, match=r"inference split has 1 item\(s\) but 2 processes"):
        distributed_sampler([0], "inference", even_divisible=False, shuffle=False, num_replicas=2, rank=1)


def test_distributed_sampler_reads_switches_given_as_text():
    """``--validate#sampler#even_divisible false`` arrives as the text "false", which is true: a 3-image validation
    split over 2 processes repeated an image (counted twice in the metrics) and "false" for ``shuffle`` shuffled.
    The switches take the text forms of as_bool; other text is refused naming the switch."""
    from monai_gmr.workflows import distributed_sampler

    data = list(range(3))
    shards = [list(distributed_sampler(data, "validation", even_divisible="false", shuffle="false", num_replicas=2,
                                       rank=r)) for r in (0, 1)]  # fmt: skip
    assert shards == [[0, 2], [1]]
    one = {"num_replicas": 2, "rank": 1}
    assert list(distributed_sampler([0], "inference", even_divisible="no", shuffle="0", allow_empty="true", **one)) == []
    with pytest.raises(ValueError, match=r"inference split has 1 item\(s\) but 2 processes"):
        distributed_sampler([0], "inference", even_divisible="false", shuffle=False, allow_empty="false", **one)
    for name in ("even_divisible", "shuffle", "allow_empty"):
        with pytest.raises(ValueError, match=name):
            distributed_sampler(data, "validation", num_replicas=2, rank=0, **{name: "maybe"})


@pytest.mark.parametrize("rank", [0, 1])
def test_run_on_rank0_calls_once_between_the_barriers(monkeypatch, rank):
    """run_on_rank0: the function runs on rank 0 only, after the barrier before it (reports of all processes'
    outputs) and before the barrier after it (removal of earlier outputs before any process writes)."""
    from monai_gmr.workflows import run_on_rank0

    events = []
    assert run_on_rank0(lambda a, b=1: events.append(("fn", a, b)) or a + b, 2, b=3) == 5  # not distributed
    assert events == [("fn", 2, 3)]
    events.clear()
    monkeypatch.setattr(torch.distributed, "is_available", lambda: True)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None: rank)
    monkeypatch.setattr(torch.distributed, "barrier", lambda *a, **k: events.append("barrier"))
    fn = lambda x: events.append("fn") or x  # noqa: E731
    got = run_on_rank0(fn, 7, barrier_after=True)
    assert got == (7 if rank == 0 else None)
    assert events == (["fn", "barrier"] if rank == 0 else ["barrier"])
    events.clear()
    run_on_rank0(fn, 7, barrier_before=True)
    assert events == (["barrier", "fn"] if rank == 0 else ["barrier"])
    events.clear()
    run_on_rank0(fn, 7, barrier_before=True, barrier_after=True)
    assert events.count("barrier") == 2 and events.count("fn") == (rank == 0)


def test_find_bundle_root_reads_fires_hyphen_form_and_says_how_to_set_it(tmp_path, monkeypatch, caplog):
    """``--config-file`` (Fire's spelling of ``--config_file``, accepted by ``python -m monai.bundle``) was not read,
    and with an installed monai_gmr (no source checkout to fall back on) the fallback to the working directory only
    said "could not locate the bundle root": the warning now names the setting to give (``bundle_root``)."""
    cfg = tmp_path / "my-bundle" / "configs"
    cfg.mkdir(parents=True)
    monkeypatch.setattr(sys, "argv", ["x", "verify_net_in_out", "--config-file", str(cfg / "inference.json")])
    assert find_bundle_root("journey_no_such_bundle") == str((tmp_path / "my-bundle").resolve())
    monkeypatch.setattr(sys, "argv", ["x", f"--config-file={cfg / 'inference.json'}"])
    assert find_bundle_root("journey_no_such_bundle") == str((tmp_path / "my-bundle").resolve())
    monkeypatch.setattr(sys, "argv", ["pytest"])
    monkeypatch.chdir(tmp_path)
    with caplog.at_level("WARNING", logger="monai_gmr.workflows.common"):
        assert find_bundle_root("journey_no_such_bundle") == str(tmp_path)
    assert "'journey_no_such_bundle'" in caplog.text and "set bundle_root" in caplog.text


def test_check_robustness_settings_names_the_metrics_and_classification_settings():
    """--robustness_metrics "['dcie']" (nuclei) or "['acc']" (WSI) stopped evaluation only after the validation run
    over the whole split, naming ``metrics``; the WSI evaluation did not check its robustness angles / flips before
    that run at all."""
    from monai_gmr.workflows import check_robustness_settings

    with pytest.raises(ValueError, match="robustness_metrics must be a non-empty list of"):
        check_robustness_settings([0, 90], ["h"], metrics=["dcie"])
    with pytest.raises(ValueError, match="robustness_metrics must be a non-empty list of"):
        check_robustness_settings([0, 90], ["h"], metrics=["dice"], task="classification")
    with pytest.raises(ValueError, match="robustness_angles=\\[\\]"):
        check_robustness_settings([], ["h"], task="classification")
    check_robustness_settings([0, 90], [], metrics=["accuracy", "auc"], task="classification")
    check_robustness_settings(list(range(0, 360, 10)), ["h", "v"], "disk", "zeros", metrics=["dice", "aji"])


def test_check_tta_settings_names_the_tta_settings():
    """--tta_angles "[]", --tta_flips "['x']" or --tta_padding zero failed when the TTA inferer was built, naming
    RotationTTAInferer's angles / axis / padding_mode but no bundle setting."""
    from monai_gmr.workflows import check_tta_settings

    for bad in ({"angles": []}, {"flips": ["x"]}, {"padding_mode": "zero"}):
        kw = {"angles": [0, 90], "flips": ["h"], "padding_mode": "reflection", **bad}
        with pytest.raises(ValueError, match="tta_angles=.* / tta_flips=.* / tta_padding="):
            check_tta_settings(**kw)
    check_tta_settings([0, 90, 180, 270], ["h"], "reflection")
    check_tta_settings(45, [], task="classification")


def test_fresh_run_on_another_rank_leaves_the_earlier_checkpoints_to_rank_0(tmp_path, monkeypatch):
    """resume=False under torchrun: only the main process moves an earlier run's checkpoints aside. Every rank
    calling os.replace on the same files raced rank 0 (a rank found the file gone, or made a second
    previous_run_* folder holding part of them)."""
    _run_with_saver(tmp_path, 2, False)  # leaves epochs 1, 2
    monkeypatch.setattr(torch.distributed, "is_available", lambda: True)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None: 1)
    trainer, net, _ = _tiny_trainer(None, max_epochs=1)
    assert attach_resume(trainer, False, tmp_path, {"model": net, "trainer": trainer}) is None
    assert sorted(p.name for p in tmp_path.glob("checkpoint_*.pt")) == ["checkpoint_epoch=1.pt", "checkpoint_epoch=2.pt"]
    assert not list(tmp_path.glob("previous_run*"))


def test_resume_neither_counts_nor_prunes_unreadable_newer_checkpoints(tmp_path):
    """Unreadable newer checkpoints (skipped by the resume) do not count towards n_saved: counting them pruned a
    readable checkpoint at the start of the run, leaving the one resumed from as the only readable file until the
    next save replaced the broken ones."""
    _run_with_saver(tmp_path, 2, False)  # leaves epochs 1, 2 (n_saved=2)
    for n in (3, 4):  # two newer files cut short (e.g. copied from another disk)
        (tmp_path / f"checkpoint_epoch={n}.pt").write_bytes((tmp_path / "checkpoint_epoch=2.pt").read_bytes()[:100])
    trainer, net, opt = _tiny_trainer(None, max_epochs=3, n=4)
    sd = {"model": net, "optimizer": opt, "trainer": trainer}
    saver = AtomicCheckpointSaver(save_dir=str(tmp_path), save_dict=sd, save_interval=1, n_saved=2)
    path = attach_resume(trainer, True, tmp_path, sd, saver=saver)
    assert Path(path).name == "checkpoint_epoch=2.pt"
    # right after the resume was set up (before any new save): both readable checkpoints are still there
    assert sorted(p.name for p in tmp_path.glob("checkpoint_*.pt")) == [f"checkpoint_epoch={n}.pt" for n in (1, 2, 3, 4)]
    assert [item.filename for item in saver._interval_checkpoint._saved] == ["checkpoint_epoch=1.pt", "checkpoint_epoch=2.pt"]


def test_best_model_record_is_written_only_beside_an_existing_best_model(tmp_path):
    """model.pt.json records the state of the best model beside it: a resumed run whose model.pt is gone (removed,
    or its save failed) and whose validation does not beat the restored best saved nothing, yet wrote a record of
    a best model that does not exist."""
    from ignite.engine import Engine

    net = torch.nn.Linear(1, 1, bias=False)
    best = AtomicCheckpointSaver(save_dir=str(tmp_path), save_dict={"model": net}, save_key_metric=True,
                                 key_metric_filename="model.pt")  # fmt: skip
    evaluator = Engine(lambda e, b: None)
    state = KeyMetricState(best, evaluator)
    state.load_state_dict({"saved": [[0.9, "model.pt"]], "best_metric": 0.9, "best_metric_epoch": 3})
    evaluator.run([0], max_epochs=1)  # a validation that saved no new best model
    assert not (tmp_path / "model.pt.json").exists()
    torch.save(net.state_dict(), tmp_path / "model.pt")
    evaluator.run([0], max_epochs=2)
    assert json.loads((tmp_path / "model.pt.json").read_text())["saved"] == [[0.9, "model.pt"]]


def test_load_checkpoint_with_strict_false_loads_the_matching_keys(tmp_path):
    """strict=False (e.g. a backbone checkpoint without the new head) loads the keys that match and leaves the
    others; it was passed on to load_state_dict, and a strict load refuses such a file."""
    src = torch.nn.Sequential(torch.nn.Linear(3, 2))
    torch.save({"model": src.state_dict()}, tmp_path / "backbone.pt")
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    head = net[1].weight.detach().clone()
    load_checkpoint(net, tmp_path / "backbone.pt", strict=False)
    assert torch.equal(net[0].weight, src[0].weight) and torch.equal(net[1].weight, head)
    with pytest.raises(RuntimeError, match="does not fit the network"):
        load_checkpoint(net, tmp_path / "backbone.pt")


_GOOD_TRAINING_SETTINGS = dict(
    epochs=2, epoch_length=None, val_interval=1, ckpt_interval=1, log_interval=0, learning_rate="1e-3", weight_decay=0,
    batch_size="2", amp="false", compile=False, compile_kwargs=None, resume="no", augment_rotation=True, num_workers=0,
    val_batch_size=1, crops_per_image=1, cache_rate=1, sw_padding="reflect", val_rotation="false",
)


@pytest.mark.parametrize("setting, bad", [
    ("epochs", 0), ("epoch_length", 0), ("val_interval", 0), ("ckpt_interval", 0), ("log_interval", -1),
    ("learning_rate", 0), ("weight_decay", -1), ("batch_size", 0), ("num_workers", -1), ("val_batch_size", 0),
    ("crops_per_image", 0), ("cache_rate", 1.5), ("sw_padding", "zero"), ("amp", "maybe"),
])  # fmt: skip
def test_check_training_settings_accepts_the_limits_and_names_each_bad_setting(setting, bad):
    """The values at the edge of each range pass (log_interval 0: no iteration lines; weight_decay 0; cache_rate 1:
    everything cached; epoch_length None), and a bad value is refused naming its own setting, not a neighbour's."""
    from monai_gmr.workflows.common import check_training_settings

    check_training_settings(**_GOOD_TRAINING_SETTINGS)
    with pytest.raises(ValueError, match=rf"^{setting}\b") as info:
        check_training_settings(**{**_GOOD_TRAINING_SETTINGS, setting: bad})
    others = set(_GOOD_TRAINING_SETTINGS) - {setting}
    assert not [o for o in others if re.search(rf"\b{o}\b", str(info.value))], str(info.value)


def _fake_rank(monkeypatch, rank):
    monkeypatch.setattr(torch.distributed, "is_available", lambda: True)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None: rank)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: 2)


@pytest.mark.parametrize("rank", [0, 1])
def test_summaries_are_written_by_the_main_process_only(tmp_path, monkeypatch, rank):
    """Under torchrun every rank computes the evaluation summary and the run summary; only rank 0 writes the JSON
    files (every rank replacing the same file raced on it, and the other ranks' views overwrote rank 0's)."""
    _fake_rank(monkeypatch, rank)
    out = summarize_evaluation(tmp_path / "metrics.json", split="test")
    assert out == {"split": "test"}
    trainer, _, _ = _tiny_trainer(None, max_epochs=1, n=2)
    pl = ProgressLogger(interval=0, summary_file=tmp_path / "train_summary.json")
    pl.attach(trainer)
    trainer.run()
    assert pl.summary["epochs_completed"] == 1
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == (["metrics.json", "train_summary.json"] if rank == 0 else [])


def test_validation_at_start_runs_once_before_the_first_epoch_only():
    """exec_at_start validates once, at the run's first epoch start, then only every ``interval`` epochs and at the
    last one (a validation at every epoch start doubled the validations of a run with interval 1)."""
    from ignite.engine import Events
    from monai.engines import SupervisedEvaluator

    trainer, net, _ = _tiny_trainer(None, max_epochs=3, n=2)
    loader = torch.utils.data.DataLoader([{"image": torch.rand(1, 8, 8), "label": torch.zeros(1, 8, 8)}], batch_size=1)
    evaluator = SupervisedEvaluator(device=torch.device("cpu"), val_data_loader=loader, network=net)
    seen = []
    evaluator.add_event_handler(Events.COMPLETED, lambda e: seen.append(e.state.epoch))
    EpochValidationHandler(interval=2, validator=evaluator, exec_at_start=True).attach(trainer)
    trainer.run()
    assert seen == [0, 2, 3]


@pytest.mark.parametrize("rank", [0, 1])
def test_run_on_rank0_first_runs_once_on_every_rank_rank_0_before_the_barrier(monkeypatch, rank):
    """run_on_rank0_first: rank 0 runs the set-up step before the barrier, every other rank after it (and each
    rank gets its own result: e.g. the datalist path the other ranks find ready)."""
    events = []
    _fake_rank(monkeypatch, rank)
    monkeypatch.setattr(torch.distributed, "barrier", lambda *a, **k: events.append("barrier"))
    got = run_on_rank0_first(lambda x: events.append(("fn", rank)) or x * 2, 21)
    assert got == 42
    assert events == ([("fn", 0), "barrier"] if rank == 0 else ["barrier", ("fn", 1)])


def test_progress_lines_of_a_resumed_run_count_iterations_per_epoch_and_the_eta_from_what_is_left(tmp_path, monkeypatch, caplog):
    """The iteration lines number the iterations within each epoch (1..N) and a resumed run's ETA extrapolates its
    own pace over the iterations left to the end of the run (not over the whole run again)."""
    from ignite.engine import Events

    _run_with_saver(tmp_path, 2, False, n=4)  # 2 iterations per epoch, checkpoint of epoch 2 (iteration 4)
    clock = {"t": 0.0}
    monkeypatch.setattr(common.time, "perf_counter", lambda: clock["t"])
    trainer, net, opt = _tiny_trainer(None, max_epochs=4, n=4)  # 8 iterations in all, 4 left
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: clock.update(t=clock["t"] + 10.0))  # 10 s each
    ProgressLogger(interval=1, name="progress_test").attach(trainer)
    attach_resume(trainer, True, tmp_path, {"model": net, "optimizer": opt, "trainer": trainer})
    with caplog.at_level("INFO", logger="progress_test"):
        trainer.run()
    lines = [r.message for r in caplog.records if r.name == "progress_test" and "ETA" in r.message]
    got = [re.search(r"epoch (\d)/4, iteration (\d)/2 .*elapsed (\S+), ETA (\S+)", m).groups() for m in lines]
    assert got == [("3", "1", "0:00:10", "0:00:30"), ("3", "2", "0:00:20", "0:00:20"),
                   ("4", "1", "0:00:30", "0:00:10"), ("4", "2", "0:00:40", "0:00:00")]  # fmt: skip


def test_a_resumed_run_that_fails_keeps_the_run_summary(tmp_path):
    """A resumed run continues the earlier run's checkpoints, so the summary of those stays until the resumed run
    writes its own: removing it at the start (as a fresh run does) left no summary when the resumed run failed."""
    from ignite.engine import Events

    _run_with_saver(tmp_path, 2, False, n=4)
    summary = tmp_path / "summary.json"
    before = summary.read_text()
    trainer, net, opt = _tiny_trainer(None, max_epochs=4, n=4)
    ProgressLogger(interval=0, summary_file=summary).attach(trainer)
    attach_resume(trainer, True, tmp_path, {"model": net, "optimizer": opt, "trainer": trainer})

    def fail(engine):
        raise RuntimeError("killed")

    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=5), fail)
    with pytest.raises(RuntimeError, match="killed"):
        trainer.run()
    assert summary.read_text() == before


def test_check_datalist_names_the_file_an_image_check_refuses_once(tmp_path):
    """A ValueError of an ``image_checks`` check is re-raised naming the item and the file (the pipeline's own
    checks often name neither); a message that already names the file does not name it twice."""
    path = _png(tmp_path / "tile.png", (8, 8))

    def no_name(img):
        raise ValueError("2 channels")

    def named(img):
        raise ValueError(f"image {str(img.meta['filename_or_obj'])!r} is too dark")

    with pytest.raises(ValueError, match=r"^tiles item 0: image file '.*tile\.png': 2 channels$"):
        check_datalist([{"image": path}], keys=("image",), name="tiles", image_checks={"image": no_name})
    with pytest.raises(ValueError, match=r"^tiles item 0: image '.*tile\.png' is too dark$") as info:
        check_datalist([{"image": path}], keys=("image",), name="tiles", image_checks={"image": named})
    assert str(info.value).count("tile.png") == 1
