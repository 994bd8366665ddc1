"""Helpers shared by the bundle tests: run ``python -m monai.bundle run`` in a subprocess, parse configs, and read
the error of a failing in-process workflow."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

__all__ = [
    "bundle_env",
    "run_bundle",
    "config_parser",
    "workflow_error",
    "no_outputs",
    "BAD_TRAIN_SETTINGS",
    "check_kill_and_resume",
    "kill_after_epoch_config",
    "check_best_saver_keeps_the_latest_tie",
    "check_switches_read_as_bool",
    "check_monai_properties",
    "check_settings_refused_by_name",
    "LATE_TRAIN_SETTINGS",
    "check_training_settings_refused_before_the_data",
    "EXACT_VIEWS",
    "check_rotated_validation",
    "check_rotated_validation_settings_refused",
]


def bundle_env() -> dict[str, str]:
    """The environment of a bundle subprocess: 1 thread, the repository importable.

    The bundle tests' networks are tiny (widths 4-16, 32-64 pixel inputs): their steps are overhead-bound, and with 2
    OpenMP threads on 2 shared cores a training run took about 9-11 s instead of 6 s with 1 thread (spin contention,
    as for the in-process ``one_thread`` fixture); the values checked do not depend on the thread count."""
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def run_bundle(
    configs: list[str], *args: str, cwd: Path, timeout: int = 240, check: bool = True
) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run --config_file <configs> <args>`` in ``cwd``; raises with the log tail on failure
    when ``check``."""
    cfg = configs[0] if len(configs) == 1 else "[" + ",".join(f"'{c}'" for c in configs) + "]"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", cfg, *args]
    proc = subprocess.run(cmd, cwd=cwd, env=bundle_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"bundle run failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def run_torchrun_bundle(configs: list[str], *args: str, cwd: Path, nproc: int = 2, timeout: int = 300) -> str:
    """``torchrun --standalone --nproc_per_node=<nproc> -m monai.bundle run --config_file <configs> <args>`` in
    ``cwd`` (gloo on CPU); asserts it succeeded and returns its log (stdout + stderr)."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "monai.bundle",
        "run", "--config_file", "[" + ",".join(f"'{c}'" for c in configs) + "]", *args,
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=cwd, env=bundle_env(), capture_output=True, text=True, timeout=timeout)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    return log


def check_same_robustness_reports(want: dict, got: dict, metrics, tol: float = 1e-5) -> None:
    """Two rotation-robustness reports (``robustness.json``) agree on every angle and flip of ``metrics`` within
    ``tol`` (e.g. a one-process and a multi-process evaluation of one checkpoint)."""
    assert got["angles"] == want["angles"] and got["flips"] == want["flips"]
    for m in metrics:
        for a, g, w in zip(want["angles"], got["per_angle"][m], want["per_angle"][m]):
            assert w is not None and abs(g - w) < tol, (m, a, g, w)
        for f in want["flips"]:
            assert abs(got["per_flip"][f][m] - want["per_flip"][f][m]) < tol, (m, f)


def check_sampler_refuses_a_short_split(parser, key: str, split: str) -> None:
    """The sampler config item ``key`` of ``parser`` (its dataset set to one item by the caller), built as rank 1 of
    2 processes, is refused with an error naming ``split`` and both numbers."""
    parser[f"{key}#num_replicas"], parser[f"{key}#rank"] = 2, 1
    with pytest.raises(RuntimeError) as info:
        parser.get_parsed_content(key)
    msgs = error_chain(info.value)
    assert f"the {split} split has 1 item(s) but 2 processes take part" in " ".join(msgs), (key, msgs)


def config_parser(files, *, metadata: str, **override):
    """A MONAI ``ConfigParser`` over ``files`` with the bundle's metadata and ``override`` applied."""
    from monai.bundle import ConfigParser

    p = ConfigParser()
    p.read_config(files)
    p.read_meta(metadata)
    p.update(override)
    return p


def error_chain(exc: BaseException) -> list[str]:
    """The messages of ``exc`` and of the exceptions it was raised from or during (``__cause__``, else
    ``__context__``): MONAI wraps a config expression's error in its own."""
    msgs, e = [], exc
    while e is not None:
        msgs.append(str(e))
        e = e.__cause__ or e.__context__
    return msgs


def workflow_error(configs, **override) -> str:
    """Initialise and run a bundle workflow in-process; it must fail: the text of the whole exception chain."""
    from monai.bundle import ConfigWorkflow

    wf = ConfigWorkflow(config_file=configs, workflow_type=None, logging_file=False, **override)
    with pytest.raises(Exception) as info:
        wf.initialize()
        wf.run()
    msgs, e = [], info.value
    while e is not None:
        msgs.append(f"{type(e).__name__}: {e}")
        e = e.__cause__ or e.__context__
    return "\n".join(msgs)


#: the bundles' on/off settings; ``python -m monai.bundle run --amp false`` gives them as strings ("false")
SWITCHES = (
    "amp", "tta", "resume", "generate_synthetic", "augment_rotation", "instance_metrics", "slide_eval", "strict", "compile",
    "val_rotation",
)


def check_switches_read_as_bool(config_dir: Path) -> None:
    """Every reference to an on/off setting in the bundle's configs goes through ``monai_gmr.utils.as_bool``: a
    bare ``@amp`` would take the command line's ``--amp false`` (the string ``"false"``) as true."""
    import re

    bare = re.compile(r"(?<!as_bool\()@(" + "|".join(SWITCHES) + r")\b")
    found = []
    for f in sorted(Path(config_dir).glob("*.json")):
        found += [f"{f.name}: {m.group(0)}" for m in bare.finditer(f.read_text())]
    assert not found, found


def no_outputs(out: Path) -> bool:
    """True when ``out`` (an output folder that did not exist before the run) is still missing: no file, no folder
    (e.g. an empty ``logs/`` or ``models/``), and not even an empty ``out`` itself, which a run that stopped on a
    bad setting used to leave behind (the checkpoint saver created ``models/`` with its parents)."""
    return not out.exists()


#: settings that are only checked once the trainer is being built or run, after its handlers (TensorBoard writer,
#: checkpoint savers) were constructed: a run stopped by them must still write nothing
BAD_TRAIN_SETTINGS = (
    {"amp": "maybe"},  # trainer/evaluator argument, parsed after the handlers
    {"val_interval": 0},  # EpochValidationHandler, built after the evaluator and its TensorBoard handler
    {"resume": "maybe"},  # initialize: attach_resume, after the trainer
    {"epochs": 0},  # ignite refused max_epochs=0 in trainer.run() (naming max_epochs)
    {"epoch_length": 0},  # ran 0 iterations per epoch: trained nothing, no error
    {"val_interval": "5x"},  # text that is not a number (a command line passes text)
    {"learning_rate": "abc"},  # AdamW: "TypeError: '<=' not supported between 'float' and 'str'", no name
    {"weight_decay": -1},  # AdamW: "Invalid weight_decay value: -1" behind "Failed to instantiate torch.optim.AdamW"
    {"ckpt_interval": 0},  # CheckpointSaver: no interval checkpoint at all, so `--resume true` later found nothing
    {"ckpt_interval": "2x"},  # CheckpointSaver: "'>' not supported between instances of 'str' and 'int'", no name
    {"compile_kwargs": "backend=eager"},  # the engine: "argument after ** must be a mapping, not str", no name
)


def kill_after_epoch_config(folder: Path, epoch: int) -> Path:
    """A config file to add after ``train.json``: the trainer SIGKILLs its own process once ``epoch`` completes
    (after that epoch's checkpoint, which is attached earlier)."""
    path = Path(folder) / f"kill_after_epoch{epoch}.json"
    path.write_text(json.dumps({
        "run": [
            "$import signal",
            f"$@train#trainer.add_event_handler(ignite.engine.Events.EPOCH_COMPLETED(once={epoch}), "
            "lambda e: os.kill(os.getpid(), signal.SIGKILL))",
            "$@train#trainer.run()",
        ],
    }))  # fmt: skip
    return path


def check_kill_and_resume(train_config: str, args: list[str], out: Path, tmp_path: Path) -> None:
    """SIGKILL training right after the first epoch's checkpoint, then ``--resume true`` to the end.

    ``args`` must set ``--output_dir out``, 3 epochs of 2 iterations and validation every 2 epochs. Checks that
    the killed run left exactly the epoch-1 checkpoint and nothing half-written, and that the resumed run restored
    it and completed epochs 2-3.
    """
    kill = kill_after_epoch_config(tmp_path, 1)
    proc = run_bundle([train_config, str(kill)], *args, cwd=tmp_path, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    models = out / "models"
    assert sorted(p.name for p in models.glob("checkpoint_epoch=*.pt")) == ["checkpoint_epoch=1.pt"]
    assert not (out / "train_summary.json").exists()
    assert not [p for p in models.iterdir() if not p.name.endswith((".pt", "model.pt.json"))]  # no partial checkpoint

    proc = run_bundle([train_config], *args, "--resume", "true", cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert "Restored all variables from" in log and "checkpoint_epoch=1.pt" in log
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["resumed"] is True
    assert summary["start_epoch"] == 1 and summary["start_iteration"] == 2  # epoch_length 2
    assert summary["epochs_completed"] == 3 and summary["iterations_completed"] == 6
    assert {p.name for p in models.glob("checkpoint_epoch=*.pt")} >= {"checkpoint_epoch=2.pt", "checkpoint_epoch=3.pt"}
    assert (models / "model.pt").is_file()


def check_best_saver_keeps_the_latest_tie(parser, ckpt_dir: Path) -> None:
    """The config's ``validate#best_saver`` writes ``model.pt`` for the latest of equally scored epochs.

    A saturating key metric (patch AUC reaches 1.0 after one epoch on easy data) must not freeze ``model.pt`` at
    the first epoch that reached it: validation scores 0.5, 1.0, 1.0, 0.9 must leave epoch 3's weights.
    """
    import torch
    from ignite.engine import Engine, Events

    net = parser.get_parsed_content("network")
    saver = parser.get_parsed_content("validate#best_saver")
    scores = [0.5, 1.0, 1.0, 0.9]
    engine = Engine(lambda e, b: None)

    @engine.on(Events.EPOCH_COMPLETED)
    def _validation_result(e):  # stands in for the evaluator: new weights, then this epoch's metric
        with torch.no_grad():
            for p in net.parameters():
                p.fill_(float(e.state.epoch))
        e.state.metrics = {"val_key": scores[e.state.epoch - 1]}
        e.state.key_metric_name = "val_key"

    saver.attach(engine)  # after the handler above: it reads the metric that epoch set
    engine.run([0], max_epochs=len(scores))
    state = torch.load(Path(ckpt_dir) / "model.pt", map_location="cpu", weights_only=True)
    state = state.get("model", state)
    values = {float(v.reshape(-1)[0]) for k, v in state.items() if k in dict(net.named_parameters())}
    assert values == {3.0}, f"model.pt holds the weights of epoch(s) {values}, expected the latest tie (3)"
    # the evaluator's best_metric_epoch (logs, train_summary.json) must name the same epoch as model.pt
    cmp = parser.get_parsed_content("validate#evaluator#metric_cmp_fn")
    best, best_epoch = -1.0, -1
    for epoch, score in enumerate(scores, 1):
        if cmp(score, best):
            best, best_epoch = score, epoch
    assert best_epoch == 3, f"the evaluator reports epoch {best_epoch} as best, model.pt holds epoch 3"


def check_monai_properties(config: str, metadata: str, workflow_type: str, **override) -> None:
    """MONAI's own bundle check: ``ConfigWorkflow(..., workflow_type).check_properties()`` (what the model-zoo CI
    runs on train/inference configs) finds every required property (e.g. ``dataset`` and ``evaluator`` for
    "infer"; the WSI inference lacked both: ``KeyError: Property 'dataset' ... not in the config``) and no optional
    one under a wrong id. The config is parsed, not run, as MONAI's check does."""
    from monai.bundle import ConfigWorkflow

    # "initialize": [] -- parse only: the configs' own initialize expressions would load a checkpoint
    wf = ConfigWorkflow(config_file=config, meta_file=metadata, workflow_type=workflow_type, logging_file=False,
                        **{**override, "initialize": []})  # fmt: skip
    wf.initialize()
    assert wf.check_properties() == []


def check_logits_metadata(logits, pred: dict) -> None:
    """``network_data_format.outputs.pred`` of a bundle whose network outputs logits: ``logits`` ``(N, C, ...)``
    has values outside [0, 1] (a [0, 1] range, as the metadata once said, would be false), so ``pred`` must declare
    ``type: logits`` with no range (MONAI's bundle specification: ``[]`` when the range is not bounded)."""
    assert logits.shape[1] == pred["num_channels"]
    assert bool((logits < 0).any() or (logits > 1).any())
    assert pred["type"] == "logits" and pred["value_range"] == [], pred



def seeded_draws_per_rank(files, *, metadata: str, monkeypatch, ranks=(0, 1)) -> dict[int, float]:
    """Evaluate the ``set_determinism`` item of ``initialize`` of ``files`` as if on each of ``ranks`` of a
    distributed run (faked) and return a random number drawn right after it (from the stream the augmentations and
    the data loader workers' seeds come from) per rank. The global random states are restored afterwards."""
    import random

    import numpy as np
    import torch
    import torch.distributed as dist

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    for flag in ("deterministic", "benchmark"):  # set_determinism switches them
        monkeypatch.setattr(torch.backends.cudnn, flag, getattr(torch.backends.cudnn, flag))
    states = torch.random.get_rng_state(), np.random.get_state(), random.getstate()
    draws = {}
    try:
        for rank in ranks:
            monkeypatch.setattr(dist, "get_rank", lambda group=None, r=rank: r)
            p = config_parser(files, metadata=metadata)
            idx = [i for i, x in enumerate(p.get("initialize")) if "set_determinism" in str(x)]
            assert len(idx) == 1, p.get("initialize")
            p.get_parsed_content(f"initialize#{idx[0]}")
            draws[rank] = float(torch.rand(()))
    finally:
        torch.random.set_rng_state(states[0])
        np.random.set_state(states[1])
        random.setstate(states[2])
    return draws


def check_multi_gpu_seeds_per_rank(train: str, multi_gpu: str, *, metadata: str, monkeypatch) -> None:
    """multi_gpu_train.json seeds each rank differently (``rank_seed``): with one seed on every rank, each rank's
    k-th sample got rank 0's random augmentations (the same random stream), so N processes carried 1/N of the
    augmentation variety of a one-process run. Rank 0 keeps the configured seed (the one-process run's)."""
    draws = seeded_draws_per_rank([train, multi_gpu], metadata=metadata, monkeypatch=monkeypatch)
    single = seeded_draws_per_rank([train], metadata=metadata, monkeypatch=monkeypatch, ranks=(0,))
    assert draws[0] != draws[1]
    assert draws[0] == single[0]


def check_validation_shorter_than_processes(files, *, metadata: str) -> None:
    """multi_gpu_train.json's validation sampler over fewer items than processes: the error names the split and both
    numbers (MONAI's DistributedSampler said only "the dataset length is less than the number of participating
    ranks."). The training sampler repeats items instead."""
    p = config_parser(files, metadata=metadata)
    p["validate#dataset"] = "$[0]"
    p["train#dataset"] = "$[0]"
    for key in ("validate#sampler", "train#sampler"):
        p[f"{key}#num_replicas"] = 2
        p[f"{key}#rank"] = 1
    assert list(p.get_parsed_content("train#sampler")) == [0]
    with pytest.raises(RuntimeError) as info:
        p.get_parsed_content("validate#sampler")
    msgs = error_chain(info.value)
    assert "the validation split has 1 item(s) but 2 processes take part" in " ".join(msgs), msgs


def init_id(configs, contains: str, *, metadata: str) -> str:
    """``initialize#N`` of the one ``initialize`` item of ``configs`` whose text contains ``contains`` (hard-coded
    indices went stale whenever an item was inserted before them)."""
    init = config_parser(configs, metadata=metadata)["initialize"]
    found = [i for i, x in enumerate(init) if contains in x]
    assert len(found) == 1, (contains, init)
    return f"initialize#{found[0]}"


def check_settings_refused_by_name(configs, *, metadata: str, cases) -> None:
    """Each ``(setting, bad value, config id)`` of ``cases``: evaluating that config id (an expression that reads the
    setting) with the bad value raises an error whose chain says ``"<setting> must be"``. Only that expression is
    evaluated: nothing is built, read or generated."""
    for setting, bad, id in cases:
        p = config_parser(configs, metadata=metadata, **{setting: bad})
        with pytest.raises(Exception) as info:
            p.get_parsed_content(id)
        msgs = error_chain(info.value)
        assert any(f"{setting} must be" in m for m in msgs), (setting, bad, id, msgs)


#: a bad value of each training setting that train.json reads only when the optimizer, data loaders, handlers and
#: trainer are built, after the synthetic data were generated (``--batch_size 0`` was refused by torch, naming
#: ``batch_size`` but no setting, once the data existed)
LATE_TRAIN_SETTINGS = (
    ("batch_size", 0), ("batch_size", "4x"), ("learning_rate", "abc"), ("weight_decay", -1), ("amp", "maybe"),
    ("epochs", 0), ("epoch_length", 0), ("val_interval", "5x"), ("ckpt_interval", 0), ("log_interval", -1),
    ("compile", "maybe"), ("compile_kwargs", "x"), ("resume", "maybe"), ("augment_rotation", "maybe"),
    ("num_workers", -1), ("val_rotation", "maybe"),
)  # fmt: skip


def check_training_settings_refused_before_the_data(train: str, multi_gpu: str, *, metadata: str, extra, data: Path,
                                                     **override) -> None:
    """Every bad value of :data:`LATE_TRAIN_SETTINGS` and ``extra`` (``(setting, value)``) is refused by name in the
    item of ``initialize`` that follows ``check_cli_setting_names()`` (train.json and train.json +
    multi_gpu_train.json), the values the run accepts pass there, and a whole in-process run with ``--batch_size 0``
    stops before ``data`` (its ``dataset_dir``, synthetic data on) is created."""
    msg = workflow_error(train, dataset_dir=str(data), batch_size=0, **override)
    assert not data.exists(), (msg, sorted(str(p) for p in data.rglob("*")))  # nothing generated
    assert "batch_size must be" in msg, msg
    for configs in ([train], [train, multi_gpu]):
        init = config_parser(configs, metadata=metadata)["initialize"]
        first = next(i for i, x in enumerate(init) if "check_cli_setting_names" in x) + 1
        assert "check_training_settings" in init[first], init
        check_settings_refused_by_name(configs, metadata=metadata,
                                       cases=[(k, v, f"initialize#{first}") for k, v in (*LATE_TRAIN_SETTINGS, *extra)])
        ok = config_parser(configs, metadata=metadata, epoch_length="null", learning_rate="1e-3", weight_decay=0,
                           amp="false", batch_size="2", log_interval=0, compile_kwargs=None)  # fmt: skip
        ok.get_parsed_content(f"initialize#{first}")  # what the run accepts passes (text, null, 0 where allowed)


#: ``--val_rotation true`` over views that are exact for the bundles' GMR networks (right angles, a flip)
EXACT_VIEWS = ("--val_rotation", "true", "--val_rotation_angles", "[0, 90, 180, 270]", "--val_rotation_flips", "['h']")


def check_rotated_validation(log: str, log_dir: Path, pairs: dict[str, str], epochs: int) -> None:
    """A training run with :data:`EXACT_VIEWS` (validation every epoch): at every validation the rotated mean and worst
    view of each metric ``pairs[key]`` equal the validation's ``key`` (this epoch's value, not the previous one: the
    rotated evaluation runs before the validation handlers log) with no spread, in the log and in the single
    TensorBoard event file, which also holds the per-angle curves; the rotated evaluation is logged once per
    validation (by rank 0 alone in a multi-process run)."""
    import re

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rows = re.findall(r"Epoch\[(\d+)\] Metrics -- (.*)", log)
    assert [int(e) for e, _ in rows] == list(range(1, epochs + 1)), rows
    for _, text in rows:
        vals = dict(re.findall(r"(\w+): (\S+)", text))
        for key, m in pairs.items():
            assert vals[f"val_rotation_{m}_mean"] == vals[f"val_rotation_{m}_min"] == vals[key], (key, vals)
            assert float(vals[f"val_rotation_{m}_std"]) == 0.0, (key, vals)
    assert log.count("rotation robustness (epoch ") == epochs, log[-6000:]
    files = list(Path(log_dir).glob("events.out.tfevents.*"))
    assert len(files) == 1, files
    events = EventAccumulator(str(files[0]))
    events.Reload()
    tags = events.Tags()["scalars"]
    for key, m in pairs.items():
        want = [(e.step, e.value) for e in events.Scalars(key)]
        assert len(want) == epochs and [(e.step, e.value) for e in events.Scalars(f"val_rotation_{m}_mean")] == want
        assert [t for t in tags if t.startswith("val_rotation/") and t.endswith(f"/{m}/by_angle/step{epochs}")], tags
    # a metric changed between the epochs: a rotated value one epoch late would not have matched
    assert any(len({e.value for e in events.Scalars(key)}) > 1 for key in pairs)


def check_rotated_validation_settings_refused(configs, *, metadata: str, bad) -> None:
    """Each ``(setting, value)`` of ``bad`` (``val_rotation_angles`` / ``_flips`` / ``_metrics``) is refused naming the
    setting by the ``initialize`` item that checks the rotated validation (before any data, right after the training
    settings), whether ``val_rotation`` is on or not; the defaults pass there."""
    init = config_parser(configs, metadata=metadata)["initialize"]
    idx = next(i for i, x in enumerate(init) if "prefix='val_rotation'" in x)
    assert "check_training_settings" in init[idx - 1], init
    config_parser(configs, metadata=metadata).get_parsed_content(f"initialize#{idx}")
    for setting, value in bad:
        p = config_parser(configs, metadata=metadata, **{setting: value})
        with pytest.raises(Exception) as info:
            p.get_parsed_content(f"initialize#{idx}")
        msgs = error_chain(info.value)
        assert any(f"{setting}={value!r}" in m or f"{setting} must be" in m for m in msgs), (setting, value, msgs)


def check_key_metric_setting_refused(configs, *, metadata: str, rotated: str, bad) -> None:
    """``best_model_metric`` is checked by the ``initialize`` item right after the rotated validation's settings (before
    any data): the default, and ``rotated`` with ``--val_rotation true``, pass there; each ``(value, overrides)`` of
    ``bad`` is refused with a message naming the setting and the value."""
    init = config_parser(configs, metadata=metadata)["initialize"]
    idx = next(i for i, x in enumerate(init) if "check_key_metric_setting" in x)
    assert "prefix='val_rotation'" in init[idx - 1], init
    config_parser(configs, metadata=metadata).get_parsed_content(f"initialize#{idx}")
    config_parser(configs, metadata=metadata, val_rotation=True, best_model_metric=rotated).get_parsed_content(f"initialize#{idx}")
    for value, over in bad:
        p = config_parser(configs, metadata=metadata, best_model_metric=value, **over)
        with pytest.raises(Exception) as info:
            p.get_parsed_content(f"initialize#{idx}")
        msgs = error_chain(info.value)
        assert any(f"best_model_metric={value!r}" in m or ("best_model_metric must be" in m and repr(value) in m) for m in msgs), (value, msgs)


def check_key_metric_follows_the_configured_key_metric(
    configs, *, metadata: str, default: str, build: bool = True, **over
) -> None:
    """``best_model_metric`` defaults to the name of ``validate#key_metric`` (MONAI's ``val_key_metric`` bundle property):
    a run that renames or replaces that metric (``--validate#key_metric "{'val_dice': {...}}"``, or MONAI's
    ``workflow.val_key_metric = {...}``) keys on it, as before ``--best_model_metric`` existed, instead of being refused
    because the default still named ``default``; an explicit ``--best_model_metric`` still wins. ``build``: also build the
    evaluator's metrics (not for multi_gpu_train.json, whose network needs a process group)."""
    assert config_parser(configs, metadata=metadata, **over).get_parsed_content("best_model_metric") == default
    init = config_parser(configs, metadata=metadata)["initialize"]
    idx = next(i for i, x in enumerate(init) if "check_key_metric_setting" in x)
    renamed = {"val_renamed": config_parser(configs, metadata=metadata).get(f"validate#key_metric#{default}")}
    p = config_parser(configs, metadata=metadata, **over, **{"validate#key_metric": renamed})
    p.get_parsed_content(f"initialize#{idx}")  # was refused: "best_model_metric must be one of [...], got <default>"
    if not build:
        return
    key, additional, _ = p.get_parsed_content("validate#metric_choice")
    assert list(key) == ["val_renamed"] and default not in additional, (list(key), list(additional))
    over = {**over, "validate#key_metric": renamed}
    p = config_parser(configs, metadata=metadata, **over, best_model_metric="val_renamed")
    assert list(p.get_parsed_content("validate#metric_choice")[0]) == ["val_renamed"]


def check_key_metric_without_additional_metrics(configs, *, metadata: str, default: str, build: bool = True) -> None:
    """``--validate#additional_metrics null`` (MONAI's evaluators take ``None``; 0.1.17 trained with it) passes the
    ``best_model_metric`` check of ``initialize`` (it stopped there in "'NoneType' object is not iterable", naming no
    setting) and keys on the key metric, as ``{}`` does. ``build``: also build the evaluator's metrics (not for
    multi_gpu_train.json, whose network needs a process group)."""
    init = config_parser(configs, metadata=metadata)["initialize"]
    idx = next(i for i, x in enumerate(init) if "check_key_metric_setting" in x)
    for value in (None, {}):
        p = config_parser(configs, metadata=metadata, **{"validate#additional_metrics": value})
        p.get_parsed_content(f"initialize#{idx}")
        if build:
            key, additional, _ = p.get_parsed_content("validate#metric_choice")
            assert list(key) == [default] and not additional, (value, list(key), additional)
