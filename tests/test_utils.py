"""monai_gmr.utils: atomic writes leave either the complete file or the old one, seeding, run environment."""

from __future__ import annotations

import json
import math
import os
import random
import re

from pathlib import Path

import numpy as np
import pytest
import torch

from monai_gmr.utils import (
    as_bool,
    atomic_path,
    atomic_torch_save,
    atomic_write_json,
    atomic_write_text,
    current_umask,
    make_temp_dir,
    output_dir_error,
    run_environment,
    seed_everything,
    size_hw,
)


def test_atomic_write_json_numpy_and_no_temporary_files(tmp_path):
    p = atomic_write_json(tmp_path / "sub" / "r.json", {"a": np.float32(0.5), "b": np.arange(3), "c": tmp_path})
    assert json.loads(p.read_text()) == {"a": 0.5, "b": [0, 1, 2], "c": str(tmp_path)}
    assert [q.name for q in p.parent.iterdir()] == ["r.json"]


def test_failed_write_keeps_the_old_file(tmp_path):
    p = tmp_path / "r.json"
    atomic_write_json(p, {"v": 1})
    with pytest.raises(TypeError, match="not JSON serialisable"):
        atomic_write_json(p, {"v": object()})  # serialisation fails before the disk is touched
    with pytest.raises(RuntimeError):
        with atomic_path(p) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert json.loads(p.read_text()) == {"v": 1}
    assert [q.name for q in tmp_path.iterdir()] == ["r.json"]


def test_atomic_torch_save_round_trip(tmp_path):
    p = atomic_torch_save({"w": torch.ones(2)}, tmp_path / "m.pt")
    assert torch.equal(torch.load(p, weights_only=True)["w"], torch.ones(2))


def test_seed_everything_repeats():
    seed_everything(3)
    a = (np.random.rand(), torch.rand(2))
    seed_everything(3)
    b = (np.random.rand(), torch.rand(2))
    assert a[0] == b[0] and torch.equal(a[1], b[1])


def test_run_environment_cpu(tmp_path):
    env = run_environment("cpu")
    assert env["device"] == "cpu" and env["gpu"] is None
    assert env["torch"] == torch.__version__ and env["cpu_count"] >= 1
    assert env["commit"] is None or re.fullmatch(r"[0-9a-f]{40}", env["commit"])
    assert run_environment("cpu", repo=tmp_path)["commit"] is None  # not a git checkout



def test_run_environment_of_an_installed_package_inside_another_checkout(tmp_path):
    """monai_gmr installed as a wheel in a project's own .venv (inside the project's git checkout) recorded the
    project's HEAD as monai_gmr's commit; an installed package now records None (a source checkout its HEAD)."""
    import importlib.util
    import shutil
    import subprocess

    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    project = tmp_path / "project"
    site = project / ".venv" / "lib" / "site-packages" / "monai_gmr"
    site.mkdir(parents=True)
    shutil.copy(Path(run_environment.__code__.co_filename), site / "utils.py")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], cwd=project, check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "project"], cwd=project, check=True)
    spec = importlib.util.spec_from_file_location("installed_monai_gmr_utils", site / "utils.py")
    installed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(installed)
    assert installed.run_environment("cpu")["commit"] is None
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True).stdout.strip()
    assert installed.run_environment("cpu", repo=project)["commit"] == head  # an explicit repo is recorded as asked

@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_atomic_files_get_the_umask_permissions(tmp_path, mask):
    """Atomic writes end with the mode of a normally created file (0o666 minus the umask), not mkstemp's 0o600."""
    import os

    old = os.umask(mask)
    try:
        assert current_umask() == mask
        atomic_write_text(tmp_path / "report.json", "{}")
        atomic_torch_save({"a": torch.zeros(1)}, tmp_path / "model.pt")
        with atomic_path(tmp_path / "img.png") as tmp:
            tmp.unlink()  # a writer that creates its own file in place of the temporary one
            tmp.write_bytes(b"png")
        with open(tmp_path / "plain.txt", "w") as f:  # the reference: what the OS gives a new file
            f.write("x")
    finally:
        os.umask(old)
    want = os.stat(tmp_path / "plain.txt").st_mode & 0o777
    assert want == 0o666 & ~mask
    for name in ("report.json", "model.pt", "img.png"):
        assert os.stat(tmp_path / name).st_mode & 0o777 == want, name


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_make_temp_dir_gets_the_umask_permissions(tmp_path, monkeypatch, mask):
    """The temporary dataset folder (moved into place as the dataset) has mkdir's mode, not mkdtemp's 0o700."""
    import os

    monkeypatch.chdir(tmp_path)
    old = os.umask(mask)
    try:
        tmp = make_temp_dir(Path("sub") / "data")
        os.mkdir(tmp_path / "plain")  # the reference: what the OS gives a new folder
    finally:
        os.umask(old)
    assert tmp.is_absolute() and tmp.parent == tmp_path / "sub" and tmp.name.startswith(".data.tmp-")
    assert tmp.is_dir() and not any(tmp.iterdir())
    want = os.stat(tmp_path / "plain").st_mode & 0o777
    assert want == 0o777 & ~mask and os.stat(tmp).st_mode & 0o777 == want


def test_seed_everything_seeds_python_random_too():
    from monai_gmr.utils import seed_everything
    seed_everything(3)
    a = (random.random(), np.random.rand(), torch.rand(2))
    seed_everything(3)
    b = (random.random(), np.random.rand(), torch.rand(2))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


@pytest.mark.parametrize("text", ["false", "False", "FALSE", " no ", "off", "0", "n"])
def test_as_bool_reads_command_line_false_as_false(text):
    # `python -m monai.bundle run --amp false` passes the string "false", which Python itself would call true
    assert as_bool(text, "amp") is False


@pytest.mark.parametrize("value", ["true", "True", "yes", "on", "1", "Y", True, 1])
def test_as_bool_reads_true(value):
    assert as_bool(value, "amp") is True


@pytest.mark.parametrize("value", ["maybe", "", "2", 2, None, 0.5])
def test_as_bool_rejects_other_values_naming_the_switch(value):
    with pytest.raises(ValueError, match=r"^generate_synthetic must be a boolean .*got"):
        as_bool(value, "generate_synthetic")
    assert as_bool(False) is False



def test_summary_writer_creates_nothing_until_a_value_is_written(tmp_path):
    """A bundle builds its writer before every input is checked: the event file (and its folder) must appear only
    when the first value is logged, so a run stopped by bad input leaves no half-written logs/."""
    from monai_gmr.utils import summary_writer, tensorboard_available

    if not tensorboard_available():
        pytest.skip("tensorboard is not installed")
    log_dir = tmp_path / "logs"
    w = summary_writer(log_dir)
    assert not log_dir.exists()  # a SummaryWriter creates the folder and an event file at once
    assert w.get_logdir() == str(log_dir)
    w.flush()
    w.close()
    assert not log_dir.exists() and not w.created
    w.add_scalar("loss", 1.0, 1)
    w.flush()
    assert w.created and len(list(log_dir.glob("events.out.tfevents.*"))) == 1
    w.close()


def test_positive_int_reads_counts_and_names_the_setting():
    from monai_gmr.utils import positive_int

    assert positive_int(5, "epochs") == 5 and positive_int(np.int64(3), "epochs") == 3
    assert positive_int(" 7 ", "epochs") == 7  # a command line may pass text
    assert positive_int(None, "epoch_length", allow_none=True) is None
    # `--epoch_length null` reaches the config as the text "null" (Python Fire); the error message offers "null"
    for text in ("null", "None", " NULL "):
        assert positive_int(text, "epoch_length", allow_none=True) is None
    with pytest.raises(ValueError, match="epochs must be a positive integer"):
        positive_int("null", "epochs")
    for bad in (0, -1, 2.5, True, "5x", "", None):
        with pytest.raises(ValueError, match="val_interval must be a positive integer"):
            positive_int(bad, "val_interval")


def test_positive_float_reads_rates_and_names_the_setting():
    from monai_gmr.utils import positive_float

    assert positive_float(1e-3, "learning_rate") == 1e-3 and positive_float(2, "learning_rate") == 2.0
    assert positive_float(" 3e-3 ", "learning_rate") == 3e-3  # a command line may pass text
    assert positive_float(0, "weight_decay", allow_zero=True) == 0.0
    for bad in (0, -1e-3, "abc", "", None, True, float("nan"), float("inf"), [1e-3]):
        with pytest.raises(ValueError, match="learning_rate must be a positive number"):
            positive_float(bad, "learning_rate")
    with pytest.raises(ValueError, match="weight_decay must be a non-negative number"):
        positive_float(-1, "weight_decay", allow_zero=True)


def test_keyword_args_reads_mappings_and_names_the_setting():
    from monai_gmr.utils import keyword_args

    assert keyword_args({"backend": "aot_eager"}, "compile_kwargs") == {"backend": "aot_eager"}
    assert keyword_args(None, "compile_kwargs") == {} and keyword_args({}, "compile_kwargs") == {}
    for bad in ("backend=eager", ["backend"], {1: "x"}, 3):
        with pytest.raises(ValueError, match="compile_kwargs must be a mapping"):
            keyword_args(bad, "compile_kwargs")


def test_lazy_summary_writer_writes_3d_images_through_monai(tmp_path):
    """MONAI's TensorBoardImageHandler plots 3D images with add_animated_gif, which calls the private
    ``writer._get_file_writer()``: the lazy writer must forward it (AttributeError before), and still pickle."""
    import copy
    import pickle

    import torch
    from monai.visualize import plot_2d_or_3d_image

    from monai_gmr.utils import LazySummaryWriter, tensorboard_available

    if not tensorboard_available():
        pytest.skip("tensorboard is not installed")
    w = LazySummaryWriter(tmp_path / "tb")
    assert not pickle.loads(pickle.dumps(w)).created and not copy.deepcopy(w).created
    plot_2d_or_3d_image(torch.rand(1, 1, 8, 8, 8), 1, w, tag="vol")
    w.close()
    assert w.created and len(list((tmp_path / "tb").glob("events.out.tfevents.*"))) == 1


def _strict_loads(text: str):
    """``json.loads`` that refuses ``NaN`` / ``Infinity`` as a strict JSON reader (JavaScript, jq) does."""

    def refuse(token: str):
        raise ValueError(f"not JSON: {token}")

    return json.loads(text, parse_constant=refuse)


def test_atomic_write_json_is_strict_non_finite_floats_become_null(tmp_path):
    """A NaN (e.g. the ROC-AUC of a single-class split) was written as a bare ``NaN`` token, which strict JSON
    readers reject: every non-finite float, however nested or typed, is written as ``null``."""
    import torch

    obj = {
        "auc": float("nan"), "inf": float("inf"), "ninf": -math.inf, "ok": 0.25, "n": 3, "flag": True, "none": None,
        "np32": np.float32("nan"), "np64": np.float64(0.5), "arr": np.array([1.0, np.nan]),
        "t0": torch.tensor(float("nan")), "t1": torch.tensor([0.5, float("inf")]), "t_int": torch.tensor(2),
        "nested": {"list": [float("nan"), (1.0, float("nan"))], np.int64(4): {"deep": [[float("-inf")]]}},
    }  # fmt: skip
    p = atomic_write_json(tmp_path / "m.json", obj)
    back = _strict_loads(p.read_text())
    assert back == {
        "auc": None, "inf": None, "ninf": None, "ok": 0.25, "n": 3, "flag": True, "none": None, "np32": None,
        "np64": 0.5, "arr": [1.0, None], "t0": None, "t1": [0.5, None], "t_int": 2,
        "nested": {"list": [None, [1.0, None]], "4": {"deep": [[None]]}},
    }  # fmt: skip
    assert obj["auc"] != obj["auc"]  # the caller's object is not modified


def test_json_ready_converts_tensor_subclasses():
    """A torch.Tensor subclass from another module (MONAI's MetaTensor, what MONAI metrics return) is a tensor too:
    it was returned unchanged (matched by the type's module name) and json_dumps raised TypeError."""
    import torch
    from monai.data import MetaTensor

    from monai_gmr.utils import json_dumps, json_ready

    obj = {"dice": MetaTensor(torch.tensor(0.5)), "per_class": MetaTensor(torch.tensor([0.25, float("nan")]))}
    assert json_ready(obj) == {"dice": 0.5, "per_class": [0.25, None]}
    assert _strict_loads(json_dumps(obj)) == {"dice": 0.5, "per_class": [0.25, None]}


def test_json_dumps_non_finite_float_keys():
    """A NaN / inf mapping key (e.g. a per-threshold table keyed by a float that came out undefined) made
    ``json_dumps`` raise ValueError under ``allow_nan=False``: keys are strings in JSON, so such a key is written as
    the string json would use for it, and NumPy / tensor keys are converted first."""
    import torch

    from monai_gmr.utils import json_dumps

    obj = {float("nan"): 1, math.inf: 2, -math.inf: 3, np.float32("nan"): 4, torch.tensor(0.5): 5, 0.25: None}
    assert _strict_loads(json_dumps(obj)) == {"NaN": 4, "Infinity": 2, "-Infinity": 3, "0.5": 5, "0.25": None}


def test_atomic_write_json_refuses_a_nan_that_escapes_the_conversion(tmp_path, monkeypatch):
    """``allow_nan=False`` in the writer: were the NaN -> null walk ever bypassed, writing raises (naming nothing
    half-way) instead of putting a bare ``NaN`` in the file; the previous file stays whole."""
    from monai_gmr import utils

    p = atomic_write_json(tmp_path / "r.json", {"v": 1})
    monkeypatch.setattr(utils, "json_ready", lambda obj: obj)  # a future regression of the walk
    with pytest.raises(ValueError):
        utils.atomic_write_json(p, {"v": float("nan")})
    assert _strict_loads(p.read_text()) == {"v": 1}
    assert [q.name for q in tmp_path.iterdir()] == ["r.json"]


def test_missing_dirs_and_remove_empty_dirs_undo_only_what_was_created(tmp_path):
    from monai_gmr.utils import missing_dirs, remove_empty_dirs

    (tmp_path / "a").mkdir()
    target = tmp_path / "a" / "b" / "c"
    created = missing_dirs(target)
    assert created == [target, target.parent]  # deepest first; tmp_path/a existed
    assert missing_dirs(tmp_path / "a") == []
    target.mkdir(parents=True)
    remove_empty_dirs(created)
    assert not (tmp_path / "a" / "b").exists() and (tmp_path / "a").is_dir()  # the pre-existing parent stays
    target.mkdir(parents=True)
    (target.parent / "user.txt").write_text("x")  # something was written meanwhile: that folder is kept
    remove_empty_dirs(created)
    assert not target.exists() and (target.parent / "user.txt").read_text() == "x"
    remove_empty_dirs(created)  # already gone or not empty: no error


def test_size_hw_reads_sizes_and_refuses_non_integers_by_name():
    """``int()`` truncated a fractional size (``stride=1.5`` became 1, ``0.5`` became 0) and let ``True`` through as
    1; ``None`` raised a TypeError that did not name the setting."""
    assert size_hw(64) == (64, 64) and size_hw((32, 48)) == (32, 48)
    assert size_hw(np.int64(8)) == (8, 8) and size_hw(256.0) == (256, 256)  # YAML / NumPy numbers
    assert size_hw("64") == (64, 64) and size_hw(("32", 48)) == (32, 48)  # text, as int() read it before
    for bad in (1.5, (64, 0.5), True, None, (32, None), "1.5", "big"):
        with pytest.raises(ValueError, match=r"^stride must be an int or \(H, W\)"):
            size_hw(bad, "stride")
    with pytest.raises(ValueError, match="stride"):
        size_hw((1, 2, 3), "stride")


def test_atomic_path_flushes_the_new_file_to_disk_before_the_rename(tmp_path, monkeypatch):
    # every writer (PIL, ITK, torch.save, matplotlib) goes through atomic_path: the file it wrote and closed must be
    # fsynced before os.replace, so a machine crash cannot leave an empty file under the final name
    import monai_gmr.utils as u

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(u.os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))), real_fsync(fd))[1])
    monkeypatch.setattr(u.os, "replace", lambda a, b: (events.append(("replace", str(a))), real_replace(a, b))[1])
    with u.atomic_path(tmp_path / "r.bin") as tmp:
        with open(tmp, "wb") as f:  # the writer's own handle, closed before atomic_path takes over
            f.write(b"abc")
    assert [e[0] for e in events] == ["fsync", "replace"]
    assert events[0][1] == events[1][1]  # the temporary file itself was flushed
    assert (tmp_path / "r.bin").read_bytes() == b"abc"
    events.clear()
    with u.atomic_path(tmp_path / "s.bin", fsync=False) as tmp:
        tmp.write_bytes(b"x")
    assert [e[0] for e in events] == ["replace"]


@pytest.mark.parametrize(
    ("device", "visible", "expected"),
    [
        ("cpu", None, ""),
        ("cpu", "0,1", ""),
        ("cuda:1", None, "1"),
        ("cuda:1", "4,6", "6"),
        ("cuda:0", " 3 , 5", "3"),
        ("cuda", "2,3", "2,3"),
        ("cuda", None, None),
    ],
)
def test_subprocess_env_selects_the_device_for_bundle_children(device, visible, expected):
    from monai_gmr.utils import subprocess_env

    base = {"PATH": "/bin", "PYTHONPATH": "/x"}
    if visible is not None:
        base["CUDA_VISIBLE_DEVICES"] = visible
    env = subprocess_env(device, pythonpath="/repo", base=base)
    assert env.get("CUDA_VISIBLE_DEVICES") == expected
    assert env["PYTHONPATH"] == os.pathsep.join(["/repo", "/x"])
    assert base.get("CUDA_VISIBLE_DEVICES") == visible and base["PYTHONPATH"] == "/x"  # the base is not changed


@pytest.mark.parametrize(("device", "visible"), [("cuda:2", "0,1"), ("tpu", None), ("cuda:x", None), ("mps", None)])
def test_subprocess_env_refuses_devices_it_cannot_select_by_name(device, visible):
    from monai_gmr.utils import subprocess_env

    base = {} if visible is None else {"CUDA_VISIBLE_DEVICES": visible}
    with pytest.raises(ValueError, match="device="):
        subprocess_env(device, base=base)


def test_failed_torch_save_keeps_the_old_checkpoint(tmp_path):
    """``atomic_torch_save`` writes a temporary file and renames it: a save that fails half-way (an unpicklable object
    after a tensor) leaves the previous checkpoint intact and no temporary file behind."""
    p = tmp_path / "model.pt"
    atomic_torch_save({"w": torch.ones(3)}, p)
    with pytest.raises(Exception):
        atomic_torch_save({"w": torch.zeros(1000), "f": lambda: None}, p)
    assert torch.equal(torch.load(p, weights_only=True)["w"], torch.ones(3))
    assert [q.name for q in tmp_path.iterdir()] == ["model.pt"]


def test_remove_empty_dirs_goes_on_past_a_folder_already_gone(tmp_path):
    """The deepest folder was removed by someone else: its empty parents are still removed."""
    from monai_gmr.utils import missing_dirs, remove_empty_dirs

    target = tmp_path / "a" / "b" / "c"
    created = missing_dirs(target)
    target.mkdir(parents=True)
    target.rmdir()
    remove_empty_dirs(created)
    assert not (tmp_path / "a").exists() and tmp_path.is_dir()


def test_output_dir_error_names_a_file_in_the_way(tmp_path):
    (tmp_path / "afile").write_text("")
    assert output_dir_error(tmp_path) is None and output_dir_error(tmp_path / "new" / "deeper") is None
    assert "is a file" in output_dir_error(tmp_path / "afile") and output_dir_error(tmp_path / "afile").startswith("--out ")
    assert "lies under the file" in output_dir_error(tmp_path / "afile" / "sub", name="--results")
    assert output_dir_error(tmp_path / "afile" / "sub", name="--results").startswith("--results ")


def test_null_to_none_reads_null_text_unless_it_names_a_path(tmp_path):
    """The one reading of "null"/"none" command-line text for settings whose default is null."""
    from monai_gmr.utils import null_to_none

    for text in ("null", " None ", "NULL", None):
        assert null_to_none(text) is None
    assert null_to_none("nullx") == "nullx" and null_to_none(3) == 3 and null_to_none("") == ""
    (tmp_path / "none").mkdir()
    assert null_to_none("none", path_base=tmp_path) == "none"  # a folder really called "none" stays a path
    assert null_to_none("null", path_base=tmp_path) is None


def test_positive_int_allow_zero_and_fraction_name_the_setting():
    """``--seed abc`` failed inside MONAI's set_determinism ("invalid literal for int()") and ``--seed 1.5`` was
    truncated; ``--log_interval x`` failed with "'<' not supported"; ``--cache_rate 2`` was accepted silently and
    ``--cache_rate all`` failed with "invalid literal for int() with base 10: 'allallallall'"."""
    from monai_gmr.utils import fraction, positive_int

    assert positive_int(0, "seed", allow_zero=True) == 0 and positive_int("7", "seed", allow_zero=True) == 7
    for bad in ("abc", 1.5, -1, True, None):
        with pytest.raises(ValueError, match="seed must be a non-negative integer"):
            positive_int(bad, "seed", allow_zero=True)
    with pytest.raises(ValueError, match="log_interval must be a positive integer"):
        positive_int(0, "log_interval")
    assert fraction(1, "cache_rate", include_one=True) == 1.0 and fraction("0.25", "val_frac") == 0.25
    for bad, one in ((2, True), (-0.5, True), ("all", True), (1.0, False), (float("nan"), True), (None, False)):
        with pytest.raises(ValueError, match=r"x must be a number in \[0, 1"):
            fraction(bad, "x", include_one=one)
