"""Choosing the best model's metric (workflows/common.py): ``check_key_metric_setting``, ``choose_key_metric``,
the rotated validation as the key metric (``RotationRobustnessMetric`` on a MONAI evaluator with a key-metric
checkpoint saver) and ``KeyMetricState`` refusing a resume with another key metric."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from ignite.engine import Events, State
from monai.engines import SupervisedEvaluator
from monai.handlers import MeanDice, from_engine
from monai.transforms import Activationsd, AsDiscreted, Compose

from monai_gmr.evaluation import RotationRobustnessHandler, RotationRobustnessMetric
from monai_gmr.workflows import AtomicCheckpointSaver, KeyMetricState, check_key_metric_setting, choose_key_metric
from monai_gmr.workflows.common import _ResumeLoader

pytestmark = pytest.mark.usefixtures("one_thread")

PLAIN = ["val_mean_dice", "val_mean_iou"]


def _handler(**kw):
    kw = {"prefix": "val_rotation", "angles": (0, 90), "flips": (), "metrics": ("dice",), "device": "cpu", "plot": False, **kw}
    return RotationRobustnessHandler(**kw)


# ------------------------------------------------------------------------------------------- check_key_metric_setting
def test_check_key_metric_setting_accepts_the_validation_metrics_and_rotated_means_and_minima():
    for name in PLAIN:
        assert check_key_metric_setting(name, PLAIN) is None
        assert check_key_metric_setting(name, PLAIN, val_rotation=True, rotation_metrics=["dice"]) is None
    assert check_key_metric_setting("val_rotation_dice_min", PLAIN, True, ["dice", "iou"]) == ("dice", "min")
    assert check_key_metric_setting("val_rotation_iou_mean", PLAIN, True, ["dice", "iou"]) == ("iou", "mean")
    assert check_key_metric_setting("val_rotation_auc_min", ["val_auc"], True, None, task="classification") == ("auc", "min")
    assert check_key_metric_setting("val_rotation_auc_mean", PLAIN, True, None) == ("auc", "mean")  # segmentation default


@pytest.mark.parametrize(
    "name, val_rotation, metrics, match",
    [
        ("val_dice", False, ["dice"], r"best_model_metric must be one of \['val_mean_dice', 'val_mean_iou', 'val_rotation_<metric>"),
        ("val_dice", True, ["dice"], r"one of \['val_mean_dice', 'val_mean_iou', 'val_rotation_dice_mean', 'val_rotation_dice_min'\]"),
        ("val_rotation_dice_min", False, ["dice"], r"best_model_metric='val_rotation_dice_min' is a metric of the rotated validation: add --val_rotation true"),
        ("val_rotation_dice_std", True, ["dice"], r"best_model_metric='val_rotation_dice_std' cannot choose the best model.*lower"),
        ("val_rotation_iou_min", True, ["dice"], r"does not compute 'iou' \(val_rotation_metrics is \['dice'\]\)"),
        ("val_rotation_dice_max", True, ["dice"], r"must be one of"),
        (None, True, ["dice"], r"best_model_metric must be the name of a validation metric.*got None"),
        (["val_mean_dice"], False, ["dice"], r"best_model_metric must be the name"),
    ],
)  # fmt: skip
def test_check_key_metric_setting_refuses_by_name(name, val_rotation, metrics, match):
    with pytest.raises(ValueError, match=match):
        check_key_metric_setting(name, PLAIN, val_rotation=val_rotation, rotation_metrics=metrics)


# -------------------------------------------------------------------------------------------------- choose_key_metric
def test_choose_key_metric_moves_the_chosen_metric_to_the_key_and_runs_the_rotation_once():
    dice, iou = object(), object()
    key, add, handlers = choose_key_metric("val_mean_dice", {"val_mean_dice": dice}, {"val_mean_iou": iou})
    assert key == {"val_mean_dice": dice} and add == {"val_mean_iou": iou} and handlers == []
    h = _handler()
    key, add, handlers = choose_key_metric("val_mean_iou", {"val_mean_dice": dice}, {"val_mean_iou": iou}, rotation=h)
    assert key == {"val_mean_iou": iou} and add == {"val_mean_dice": dice} and handlers == [h]
    key, add, handlers = choose_key_metric("val_rotation_dice_min", {"val_mean_dice": dice}, {"val_mean_iou": iou}, rotation=h)
    assert list(key) == ["val_rotation_dice_min"] and add == {"val_mean_dice": dice, "val_mean_iou": iou}
    metric = key["val_rotation_dice_min"]
    assert isinstance(metric, RotationRobustnessMetric) and metric.handler is h and metric.source == "val_rotation_dice_min"
    assert handlers == []  # the metric runs the rotated evaluation: as a handler too it would run twice
    with pytest.raises(ValueError, match="add --val_rotation true"):
        choose_key_metric("val_rotation_dice_min", {"val_mean_dice": dice}, {"val_mean_iou": iou}, rotation=None)
    with pytest.raises(ValueError, match=r"does not compute 'iou'"):  # the handler's own metrics
        choose_key_metric("val_rotation_iou_min", {"val_mean_dice": dice}, {}, rotation=h)


def test_rotation_metric_refuses_what_its_handler_does_not_compute():
    with pytest.raises(TypeError, match="RotationRobustnessHandler"):
        RotationRobustnessMetric(object(), "dice", "min")
    with pytest.raises(ValueError, match="stat must be one of"):
        RotationRobustnessMetric(_handler(), "dice", "max")
    with pytest.raises(ValueError, match="'iou' is not among the handler's metrics"):
        RotationRobustnessMetric(_handler(), "iou", "mean")


# ---------------------------------------------------------------------- the rotated validation chooses the best model
class _Net(torch.nn.Module):
    """Two-class logits from the image itself (exact under rotation), or from a fixed map (the unrotated label:
    right at 0 degrees only); ``tag`` (saved with the model) tells which validation epoch a saved model comes from."""

    def __init__(self, fixed: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("fixed", fixed)
        self.register_buffer("tag", torch.zeros(()))
        self.use_fixed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.fixed.expand_as(x) if self.use_fixed else x
        return torch.cat([1 - p, p], 1) * 10


@pytest.mark.parametrize("key", ["val_mean_dice", "val_rotation_dice_min"])
def test_rotated_key_metric_chooses_the_best_epoch_and_model(key, tmp_path):
    """Validation 1: a rotation-exact network (Dice 1 at 0 and 90 degrees); validation 2: one that only knows the
    unrotated tile (Dice 1 at 0 degrees, less at 90). Keyed on the plain Dice (ties go to the later epoch) the
    evaluator's best epoch and model.pt are the second; keyed on the rotated minimum they stay the first, with the
    rotated evaluation run once per validation and its value in the metrics the validation handlers see."""
    y = torch.zeros(1, 1, 8, 8)
    y[..., 1:3, 1:6] = 1  # a bar: a 90-degree rotation moves it off the fixed map
    net = _Net(y)
    h = _handler(data=[(y, y.long())], network=net)
    key_metric, additional, handlers = choose_key_metric(
        key, {"val_mean_dice": MeanDice(include_background=False, output_transform=from_engine(["pred", "label"]))}, {},
        rotation=h,
    )  # fmt: skip
    saver = AtomicCheckpointSaver(save_dir=str(tmp_path), save_dict={"model": net}, save_key_metric=True,
                                  key_metric_greater_or_equal=True, key_metric_filename="model.pt")  # fmt: skip
    seen: list[dict] = []
    recorder = SimpleNamespace(attach=lambda e: e.add_event_handler(Events.EPOCH_COMPLETED, lambda e: seen.append(dict(e.state.metrics))))
    post = Compose([Activationsd("pred", softmax=True),
                    AsDiscreted(["pred", "label"], argmax=[True, False], to_onehot=2)])  # fmt: skip
    evaluator = SupervisedEvaluator(
        device="cpu", val_data_loader=[{"image": y, "label": y}], network=net, postprocessing=post,
        key_val_metric=key_metric, additional_metrics=additional, metric_cmp_fn=lambda c, b: c >= b,
        val_handlers=[*handlers, recorder, saver],
    )  # fmt: skip
    for epoch in (1, 2):
        net.use_fixed = epoch == 2
        net.tag.fill_(epoch)
        evaluator.run(global_epoch=epoch)
    assert [s["val_mean_dice"] for s in seen] == pytest.approx([1.0, 1.0])
    assert seen[0]["val_rotation_dice_min"] == pytest.approx(1.0) and seen[1]["val_rotation_dice_min"] < 0.5
    assert len(h.history) == 2  # once per validation, not twice
    assert evaluator.state.key_metric_name == key
    best = 2 if key == "val_mean_dice" else 1
    assert evaluator.state.best_metric_epoch == best and evaluator.state.best_metric == pytest.approx(1.0)
    assert torch.load(tmp_path / "model.pt", weights_only=True)["tag"] == best


# ------------------------------------------------------------------------------------------------------ resume
def _state(key):
    st = State()
    st.key_metric_name, st.best_metric, st.best_metric_epoch = key, 0.8, 3
    return SimpleNamespace(state=st)


def _saver(d):
    return AtomicCheckpointSaver(save_dir=str(d), save_dict={"model": torch.nn.Linear(2, 2)}, save_key_metric=True,
                                 key_metric_filename="model.pt")  # fmt: skip


def test_key_metric_state_refuses_a_resume_with_another_key_metric(tmp_path):
    """A run resumed with another --best_model_metric compared its scores with the other metric's best (a rotated
    minimum against a plain Dice) and kept or replaced model.pt by that comparison."""
    sd = KeyMetricState(_saver(tmp_path / "a"), _state("val_mean_dice")).state_dict()
    assert sd["key_metric"] == "val_mean_dice"
    other = _state("val_rotation_dice_min")
    other.state.best_metric, other.state.best_metric_epoch = -1, -1
    with pytest.raises(ValueError, match=r"the checkpoint chose the best model by 'val_mean_dice', this run by "
                                         r"'val_rotation_dice_min' \(best_model_metric\).*best_model_metric='val_mean_dice'"):
        KeyMetricState(_saver(tmp_path / "b"), other).load_state_dict(sd)
    assert (other.state.best_metric, other.state.best_metric_epoch) == (-1, -1)  # nothing restored
    same = _state("val_mean_dice")
    KeyMetricState(_saver(tmp_path / "c"), same).load_state_dict({**sd, "best_metric": 0.9})
    assert same.state.best_metric == 0.9
    legacy = {k: v for k, v in sd.items() if k != "key_metric"}  # a checkpoint from before the name was saved
    KeyMetricState(_saver(tmp_path / "d"), other).load_state_dict(legacy)
    assert other.state.best_metric == 0.8


def test_key_metric_state_refuses_a_best_model_sidecar_of_another_key_metric(tmp_path):
    """The best model's .json (newer than the checkpoint) is checked as well, and the resume error names the file."""
    (tmp_path / "model.pt").write_bytes(b"x")
    (tmp_path / "model.pt.json").write_text(json.dumps({"saved": [[0.9, "model.pt"]], "key_metric": "val_mean_iou"}))
    ev = _state("val_mean_dice")
    with pytest.raises(ValueError, match=r"model\.pt\.json chose the best model by 'val_mean_iou'"):
        KeyMetricState(_saver(tmp_path), ev).load_state_dict({"saved": [], "key_metric": "val_mean_dice"})
    # through the resume loader: the message says which checkpoint and what to do, not "another network"
    ckpt = tmp_path / "checkpoint_epoch=1.pt"
    torch.save({"best_metric_state": {"saved": [[0.5, "model.pt"]], "key_metric": "val_mean_iou"}}, ckpt)
    (tmp_path / "model.pt.json").unlink()
    loader = _ResumeLoader(load_path=str(ckpt), load_dict={"best_metric_state": KeyMetricState(_saver(tmp_path / "e"), ev)})
    engine = SimpleNamespace(state=State(max_epochs=5, epoch_length=None))
    with pytest.raises(ValueError) as info:
        loader(engine)
    msg = str(info.value)
    assert msg.startswith(f"cannot resume from {str(ckpt)!r}: the checkpoint chose the best model by 'val_mean_iou'"), msg
    assert "another network" not in msg


def test_key_metric_state_accepts_another_key_metric_before_any_best_model(tmp_path):
    """A checkpoint written before the first validation (``--val_interval`` above 1, the run killed before it) has
    no best model to compare with: a resume with another --best_model_metric was refused, saying the checkpoint "chose
    the best model by" a metric that had chosen nothing."""
    before = _state("val_mean_dice")
    before.state.best_metric, before.state.best_metric_epoch = -1, -1
    sd = KeyMetricState(_saver(tmp_path / "a"), before).state_dict()
    assert sd == {"saved": [], "key_metric": "val_mean_dice"}
    other = _state("val_rotation_dice_min")
    other.state.best_metric, other.state.best_metric_epoch = -1, -1
    KeyMetricState(_saver(tmp_path / "b"), other).load_state_dict(sd)
    assert (other.state.best_metric, other.state.best_metric_epoch) == (-1, -1)


def test_best_model_sidecar_follows_a_tied_best_model(tmp_path):
    """Ties keep the later model (``key_metric_greater_or_equal``, ``current >= best``): model.pt was rewritten but
    its .json was not (the saver's (score, file) list had not changed), so it named the earlier epoch, and a run
    resumed from an older checkpoint after such a tie named that epoch as the best of the model.pt it kept."""
    y = torch.zeros(1, 1, 8, 8)
    y[..., 1:3, 1:6] = 1
    net = _Net(y)
    saver = AtomicCheckpointSaver(save_dir=str(tmp_path), save_dict={"model": net}, save_key_metric=True,
                                  key_metric_greater_or_equal=True, key_metric_filename="model.pt")  # fmt: skip
    post = Compose([Activationsd("pred", softmax=True),
                    AsDiscreted(["pred", "label"], argmax=[True, False], to_onehot=2)])  # fmt: skip
    evaluator = SupervisedEvaluator(
        device="cpu", val_data_loader=[{"image": y, "label": y}], network=net, postprocessing=post,
        key_val_metric={"val_mean_dice": MeanDice(include_background=False, output_transform=from_engine(["pred", "label"]))},
        metric_cmp_fn=lambda c, b: c >= b, val_handlers=[saver],
    )  # fmt: skip
    state = KeyMetricState(saver, evaluator)
    for epoch in (1, 2):  # Dice 1 both times: the tie keeps epoch 2
        net.tag.fill_(epoch)
        evaluator.run(global_epoch=epoch)
        assert evaluator.state.best_metric_epoch == epoch
        assert torch.load(tmp_path / "model.pt", weights_only=True)["tag"] == epoch
        sidecar = json.loads((tmp_path / "model.pt.json").read_text())
        assert sidecar == state.state_dict() and sidecar["best_metric_epoch"] == epoch, sidecar


def test_undefined_rotated_key_metric_is_warned_of(tmp_path, caplog):
    """Validation labels with nothing to score: the rotated Dice is NaN (MONAI's Dice gives 0), and NaN never compares
    as better, so the first validation's model stayed model.pt (and NaN the best metric) without a word."""
    import logging

    y = torch.zeros(1, 1, 8, 8)  # no foreground
    net = _Net(y)
    h = _handler(data=[(y, y.long())], network=net)
    key, additional, handlers = choose_key_metric("val_rotation_dice_min", {}, {}, rotation=h)
    saver = AtomicCheckpointSaver(save_dir=str(tmp_path), save_dict={"model": net}, save_key_metric=True,
                                  key_metric_greater_or_equal=True, key_metric_filename="model.pt")  # fmt: skip
    evaluator = SupervisedEvaluator(device="cpu", val_data_loader=[{"image": y, "label": y}], network=net,
                                    key_val_metric=key, metric_cmp_fn=lambda c, b: c >= b, val_handlers=[saver])  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="monai_gmr"):
        for epoch in (1, 2):
            net.tag.fill_(epoch)
            evaluator.run(global_epoch=epoch)
    assert evaluator.state.best_metric_epoch == 1 and torch.load(tmp_path / "model.pt", weights_only=True)["tag"] == 1
    warned = [r.getMessage() for r in caplog.records if "val_rotation_dice_min" in r.getMessage()]
    assert len(warned) == 1 and "undefined (NaN" in warned[0] and "first validation" in warned[0], warned


def test_resume_after_an_undefined_key_metric(tmp_path):
    """model.pt.json is strict JSON, so a NaN best score is written as null: a resume read the file back and failed
    in float(None) (reported as a checkpoint "of another network or settings")."""
    import math

    ev = _state("val_rotation_dice_min")
    ev.state.best_metric, ev.state.best_metric_epoch = math.nan, 1
    saver = _saver(tmp_path)
    saver._key_metric_checkpoint._saved = [saver._key_metric_checkpoint.Item(math.nan, "model.pt")]
    (tmp_path / "model.pt").write_bytes(b"x")
    state = KeyMetricState(saver, ev)
    state._write_sidecar()
    assert json.loads((tmp_path / "model.pt.json").read_text())["best_metric"] is None  # strict JSON
    resumed = _state("val_rotation_dice_min")
    resumed.state.best_metric, resumed.state.best_metric_epoch = -1, -1
    KeyMetricState(_saver(tmp_path), resumed).load_state_dict(state.state_dict())
    assert math.isnan(resumed.state.best_metric) and resumed.state.best_metric_epoch == 1


def test_undefined_rotated_key_metric_after_a_defined_one_is_warned_of_as_such(tmp_path, caplog):
    """A NaN at a later validation (after a defined best) does not keep "the first validation's" model: it cannot
    become the best, and the best so far (epoch 1 here) stays; the warning said the first validation's stays, which
    is true only when the first (or the best) value is the NaN."""
    import logging

    y = torch.zeros(1, 1, 8, 8)
    y[..., 2:6, 2:6] = 1
    empty = torch.zeros(1, 1, 8, 8)
    net = _Net(y)
    h = _handler(data=[(y, y.long())], network=net)
    key, _, _ = choose_key_metric("val_rotation_dice_min", {}, {}, rotation=h)
    evaluator = SupervisedEvaluator(device="cpu", val_data_loader=[{"image": y, "label": y}], network=net,
                                    key_val_metric=key, metric_cmp_fn=lambda c, b: c >= b)  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="monai_gmr"):
        evaluator.run(global_epoch=1)
        h.data = [(empty, empty.long())]  # nothing to score from now on
        for epoch in (2, 3):
            evaluator.run(global_epoch=epoch)
    assert evaluator.state.best_metric_epoch == 1 and evaluator.state.best_metric == pytest.approx(1.0)
    warned = [r.getMessage() for r in caplog.records if "val_rotation_dice_min" in r.getMessage()]
    assert len(warned) == 1 and "undefined (NaN" in warned[0] and "epoch 1" in warned[0], warned
    assert "first validation" not in warned[0], warned


def test_check_key_metric_setting_refuses_a_non_name_without_plain_metrics():
    """An evaluator with the rotated validation as its only metric (``choose_key_metric(name, {}, {}, rotation=h)``):
    a name that is no text was an IndexError (the message's example read ``metric_names[0]``), naming no setting."""
    with pytest.raises(ValueError, match=r"best_model_metric must be the name of a validation metric.*got None"):
        check_key_metric_setting(None, [], val_rotation=True, rotation_metrics=["dice"])
