"""Tests of monai_gmr.workflows.settings: unknown setting names given to ``python -m monai.bundle run`` are refused.

MONAI adds an override id that no config has (``--epoch 2`` for ``--epochs 2``) silently and never reads it; the
bundles' configs call ``check_cli_setting_names`` first in ``initialize`` to refuse such a run by name.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from monai_gmr.workflows import check_cli_setting_names, check_setting_names, cli_overrides, run_arguments
from tests.conftest import ROOT

NUCLEI = ROOT / "bundles" / "gmr_nuclei_segmentation" / "configs"
WSI = ROOT / "bundles" / "gmr_wsi_patch_classification" / "configs"
TRAIN, EVALUATE = str(NUCLEI / "train.json"), str(NUCLEI / "evaluate.json")
MAIN = str(Path(sys.prefix) / "lib" / "site-packages" / "monai" / "bundle" / "__main__.py")  # python -m monai.bundle


def _refused(config_files, overrides) -> str:
    with pytest.raises(ValueError) as info:
        check_setting_names(config_files, overrides)
    return str(info.value)


# ---------------------------------------------------------------------------------------------- check_setting_names
@pytest.mark.parametrize("typo, suggestion", [("epoch", "epochs"), ("learning_rat", "learning_rate"),
                                              ("netwrk_def#features", "network_def#features")])  # fmt: skip
def test_a_misspelt_setting_is_refused_naming_it_and_the_closest_ids(typo, suggestion):
    msg = _refused(TRAIN, {"epochs": 2, typo: 3})
    assert f"'{typo}'" in msg and f"did you mean '{suggestion}'" in msg, msg
    assert TRAIN in msg  # the config file it is not in
    assert "'epochs'" not in msg.split("(did you mean")[0]  # only the unknown id is named


def test_all_unknown_settings_are_named_in_one_error():
    msg = _refused(TRAIN, {"epoch": 2, "learning_rat": 0.1, "batch_size": 2})
    assert "'epoch'" in msg and "'learning_rat'" in msg and "'batch_size'" not in msg, msg


def test_known_and_nested_settings_are_accepted():
    check_setting_names(TRAIN, {"epochs": 2, "network_def#features": [8, 8, 16, 32], "train::dataloader::shuffle": False,
                                "_meta_#version": "x", "initialize": [], "run": []})  # fmt: skip


def test_ids_of_every_merged_config_file_are_known():
    """evaluate.json runs together with train.json: ``tta`` is evaluate's, ``epochs`` train's."""
    check_setting_names([TRAIN, EVALUATE], {"tta": True, "epochs": 2})
    check_setting_names(f"{TRAIN},{EVALUATE}", {"tta": True})  # MONAI's comma-separated form
    assert "'tta'" in _refused(TRAIN, {"tta": True})


def test_a_new_id_that_something_refers_to_is_accepted(tmp_path):
    check_setting_names(TRAIN, {"my_lr": 0.1, "learning_rate": "@my_lr"})  # another override refers to it
    check_setting_names(TRAIN, {"base": 4, "network_def#features": "$[@base, @base * 2, 16, 32]"})  # $ expression
    cfg = tmp_path / "extra.json"
    cfg.write_text(json.dumps({"scale": "$@factor#value * 2", "copied": "%template"}))
    check_setting_names([TRAIN, str(cfg)], {"factor": {"value": 1}, "template": [1]})  # a config refers to them
    assert "'factr'" in _refused([TRAIN, str(cfg)], {"factr": {"value": 1}})


def test_a_new_id_that_only_refers_to_itself_is_refused():
    """A new id is accepted when *another* setting (or a config) refers to it: one whose only reference is its own
    value is still never read by the config, so it is refused (mutation audit round 5: ST3)."""
    assert "'epoch_count'" in _refused(TRAIN, {"epoch_count": "$@epoch_count + 1"})


def test_a_new_id_named_by_run_init_or_final_id_is_accepted():
    check_setting_names(TRAIN, {"run_id": "my_run", "my_run": ["$print(1)"]})
    check_setting_names(TRAIN, {"init_id": "my_init", "my_init": [], "final_id": "my_end", "my_end": []})
    check_setting_names(TRAIN, {"finalize": ["$print(1)"]})  # MONAI's default final_id, which train.json lacks
    assert "'my_run'" in _refused(TRAIN, {"my_run": ["$print(1)"]})


def test_monai_run_arguments_are_not_settings():
    assert {"run_id", "init_id", "final_id", "meta_file", "config_file", "logging_file", "tracking", "args_file",
            "workflow_name", "workflow_type", "properties_path"} <= run_arguments()  # fmt: skip
    check_setting_names(TRAIN, {"meta_file": "m.json", "logging_file": False, "workflow_type": "train"})
    check_setting_names(TRAIN, {"tracking": "mlflow", "experiment_name": "x"})  # an id that mlflow tracking adds
    assert "'experiment_name'" in _refused(TRAIN, {"experiment_name": "x"})


def test_args_file_settings_are_checked_and_may_give_the_config_file(tmp_path):
    args = tmp_path / "args.json"
    args.write_text(json.dumps({"config_file": TRAIN, "epoch": 2}))
    msg = _refused(None, {"args_file": str(args)})
    assert "'epoch'" in msg and "did you mean 'epochs'" in msg, msg
    args.write_text(json.dumps({"config_file": TRAIN, "epochs": 2, "my_run": ["$print(1)"]}))
    check_setting_names(None, {"args_file": str(args), "run_id": "my_run"})
    args.write_text(json.dumps({"run_id": "my_run"}))  # its run_id names a new id given on the command line
    check_setting_names(TRAIN, {"args_file": str(args), "my_run": []})


# ---------------------------------------------------------------------------------------------------- cli_overrides
def test_cli_overrides_reads_fire_keywords_as_monai_receives_them():
    argv = [MAIN, "run", "--config_file", TRAIN, "--epochs", "2", "--learning_rate=1e-3",
            "--network_def#features", "[8, 8, 16, 32]", "--batch-size", "-4", "--amp", "--noresume"]  # fmt: skip
    config_file, over = cli_overrides(argv)
    assert config_file == TRAIN
    assert over == {"epochs": 2, "learning_rate": 1e-3, "network_def#features": [8, 8, 16, 32], "batch_size": -4,
                    "amp": True, "resume": False}  # fmt: skip


@pytest.mark.parametrize("given, expected", [
    ("['a.json','b.json']", ["a.json", "b.json"]),  # a Python list, as the bundle READMEs write it
    ("a.json,b.json", "a.json,b.json"),  # comma-separated: MONAI's ConfigParser splits it
])  # fmt: skip
def test_cli_overrides_config_file_forms(given, expected):
    assert cli_overrides([MAIN, "run", f"--config_file={given}"]) == (expected, {})


def test_cli_overrides_positional_values_and_fire_flags():
    """``run training`` is ``run_id="training"`` (Fire fills ``run``'s parameters in order); arguments after a lone
    ``--`` are Fire's own (``-- --help``)."""
    cf, over = cli_overrides([MAIN, "run", "training", "--config_file", TRAIN, "--epoch", "2", "--", "--verbose"])
    assert cf == TRAIN and over == {"run_id": "training", "epoch": 2}
    cf, over = cli_overrides([MAIN, "run_workflow", "ConfigWorkflow", "--config_file", TRAIN])
    assert cf == TRAIN and over == {"workflow_name": "ConfigWorkflow"}
    assert cli_overrides([MAIN, "run-workflow", "--config_file", TRAIN]) == (TRAIN, {})


@pytest.mark.parametrize("argv", [
    ["/usr/bin/pytest", "run", "--config_file", TRAIN],  # a program calling monai.bundle.run itself
    [MAIN, "verify_metadata", "--meta_file", "m.json"],  # another monai.bundle command
    [MAIN],
])  # fmt: skip
def test_cli_overrides_is_none_unless_a_bundle_run(argv):
    assert cli_overrides(argv) is None


def test_check_cli_setting_names_checks_only_a_bundle_run(monkeypatch):
    monkeypatch.setattr(sys, "argv", [MAIN, "run", "--config_file", TRAIN, "--epoch", "2"])
    with pytest.raises(ValueError, match=r"'epoch' \(did you mean 'epochs'\?\)"):
        check_cli_setting_names()
    monkeypatch.setattr(sys, "argv", [MAIN, "run", "--config_file", TRAIN, "--epochs", "2"])
    check_cli_setting_names()
    monkeypatch.setattr(sys, "argv", ["demo.py", "--epoch", "2"])  # not a command line of monai.bundle
    check_cli_setting_names()


@pytest.mark.parametrize("config", sorted(p.name for p in NUCLEI.glob("*.json")) + sorted(
    "wsi/" + p.name for p in WSI.glob("*.json")))  # fmt: skip
def test_every_bundle_config_checks_the_setting_names_first(config):
    path = WSI / config[4:] if config.startswith("wsi/") else NUCLEI / config
    data = json.loads(path.read_text())
    if "initialize" not in data:  # metadata.json
        return
    assert data["initialize"][0] == "$monai_gmr.workflows.check_cli_setting_names()", path


# ------------------------------------------------------------------------------------------------ review additions
def test_a_new_id_that_a_relative_reference_or_macro_points_to_is_accepted(tmp_path):
    """``@##name`` / ``%##name`` in ``a#b`` is MONAI's relative form of ``@name`` / ``%name`` (top level): a new
    ``--name`` that only such a reference uses is read by MONAI and must not be refused."""
    cfg = tmp_path / "rel.json"
    cfg.write_text(json.dumps({"a": {"b": "@##newid", "m": "%##macro_src", "c": "$@#d + 1", "d": 1}}))
    check_setting_names(str(cfg), {"newid": 5, "macro_src": 7})
    assert "'newi'" in _refused(str(cfg), {"newi": 5})
    # an override's own relative reference: "@##base" in "network_def#features" is "@base"
    check_setting_names(TRAIN, {"base": 4, "network_def#features": "$[@##base, 16]"})


def test_a_new_id_referenced_inside_another_files_macro_is_accepted(tmp_path):
    """``"%base.json#net"`` copies ``net`` of another file into the config; an ``@width`` in it refers to this
    run's top-level ``width``, which a command line may add."""
    base = tmp_path / "base.json"
    base.write_text(json.dumps({"net": {"_target_": "torch.nn.Linear", "in_features": "@width", "out_features": 2}}))
    cfg = tmp_path / "main.json"
    cfg.write_text(json.dumps({"net": f"%{base}#net"}))
    check_setting_names(str(cfg), {"width": 3})
    assert "'widht'" in _refused(str(cfg), {"widht": 3})


class _WorkflowWithOptions:
    """Stands for a ``ConfigWorkflow`` subclass given as ``run_workflow --workflow_name`` (its own arguments)."""

    def __init__(self, config_file=None, verbose_steps: int = 0, **override):
        pass


def test_arguments_of_the_named_workflow_class_are_not_settings():
    """``run_workflow --workflow_name my.Workflow --verbose_steps 2``: MONAI passes ``verbose_steps`` to the class."""
    name = f"{__name__}._WorkflowWithOptions"
    check_setting_names(TRAIN, {"workflow_name": name, "verbose_steps": 2, "epochs": 2})
    check_setting_names(TRAIN, {"workflow_name": _WorkflowWithOptions, "verbose_steps": 2})
    assert "'verbose_steps'" in _refused(TRAIN, {"verbose_steps": 2})  # not an argument of ConfigWorkflow


@pytest.mark.parametrize("tail, expected", [
    (["---", "1"], {"epochs": 2}),  # Fire consumes no keyword for an empty name (nor its value)
    (["--=1", "train"], {"epochs": 2, "run_id": "train"}),
    (["--x", "--", "--y", "--", "--verbose"], {"epochs": 2, "x": True, "y": True}),  # a lone "--" before the last
    (["--no"], {"epochs": 2, "": False}),  # Fire does pass this one: "no" + "" -> "" = False
])  # fmt: skip
def test_cli_overrides_skips_flags_with_an_empty_name_as_fire_does(tail, expected):
    """Checked against ``fire.Fire`` 0.7: ``--``/``---``/``--=v`` (empty key) is left unconsumed, so ``run`` gets no
    ``""`` setting (refusing it as "Unknown setting ''" stopped a run that MONAI carries out)."""
    assert cli_overrides([MAIN, "run", "--config_file", TRAIN, "--epochs", "2", *tail]) == (TRAIN, expected)


# ------------------------------------------------------------------------ the running workflow's arguments (any caller)
def _tiny_bundle(tmp_path: Path) -> Path:
    """A config whose ``initialize`` checks the names and whose ``run`` writes ``@out`` (so a refused run shows no
    file), with the metadata/logging files MONAI looks for beside it."""
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "metadata.json").write_text(json.dumps({"version": "0.0.1"}))
    config = {
        "imports": ["$import monai_gmr"],
        "epochs": 1,
        "out": str(tmp_path / "ran.txt"),
        "initialize": ["$monai_gmr.workflows.check_cli_setting_names()"],
        "run": ["$open(@out, 'w').write(str(@epochs))"],
    }
    (configs / "train.json").write_text(json.dumps(config))
    return configs / "train.json"


def _run_refused(fn, **kwargs) -> str:
    with pytest.raises(RuntimeError) as info:  # MONAI wraps the error of a config expression
        fn(**kwargs)
    assert isinstance(info.value.__cause__, ValueError), info.value
    return str(info.value.__cause__)


@pytest.mark.filterwarnings("ignore:parsing config_file")  # MONAI's trust notice for our own test config
def test_a_programmatic_bundle_run_is_checked_too(tmp_path):
    """``monai.bundle.run(...)`` / ``run_workflow`` / ``create_workflow`` in Python (no command line) are checked from
    the arguments MONAI received; a refused run runs nothing, an accepted one runs."""
    from monai.bundle import create_workflow, run, run_workflow

    config = _tiny_bundle(tmp_path)
    ran = tmp_path / "ran.txt"
    for fn in (run, run_workflow, create_workflow):
        assert "'epoch' (did you mean 'epochs'?)" in _run_refused(fn, config_file=str(config), epoch=3), fn
        assert not ran.exists(), fn
    run(config_file=str(config), epochs=3)
    assert ran.read_text() == "3"
    # an args_file's ids are checked as MONAI merges them with the call's
    args = tmp_path / "args.json"
    args.write_text(json.dumps({"config_file": str(config), "epoch": 4}))
    ran.unlink()
    assert "'epoch'" in _run_refused(run, args_file=str(args))
    assert not ran.exists()
    args.write_text(json.dumps({"config_file": str(config), "epochs": 4}))
    run(args_file=str(args))
    assert ran.read_text() == "4"


@pytest.mark.filterwarnings("ignore:parsing config_file")  # MONAI's trust notice for our own test config
def test_the_running_workflows_arguments_win_over_the_command_line(tmp_path, monkeypatch):
    """Inside ``create_workflow`` the check reads what MONAI was given, not ``sys.argv`` (a program started as
    ``python -m monai.bundle run`` may run another bundle itself)."""
    from monai.bundle import run

    config = _tiny_bundle(tmp_path)
    monkeypatch.setattr(sys, "argv", [MAIN, "run", "--config_file", str(config), "--epoch", "2"])
    run(config_file=str(config), epochs=2)  # the call's settings are right: accepted
    monkeypatch.setattr(sys, "argv", [MAIN, "run", "--config_file", str(config), "--epochs", "2"])
    assert "'epoch'" in _run_refused(run, config_file=str(config), epoch=2)


def test_a_workflow_built_directly_is_not_checked(tmp_path):
    """Documented limit: ``ConfigWorkflow(...)`` built and initialised by a program has no ``create_workflow`` call
    to read (MONAI keeps no list of its overrides), so the check has nothing to compare and lets it run."""
    from monai.bundle import ConfigWorkflow

    from monai_gmr.workflows import workflow_overrides

    assert workflow_overrides() is None
    workflow = ConfigWorkflow(config_file=str(_tiny_bundle(tmp_path)), epoch=2)
    workflow.initialize()
    workflow.run()
    assert (tmp_path / "ran.txt").read_text() == "1"


def test_a_bare_no_is_explained():
    message = _refused(TRAIN, {"": False})
    assert "Unknown setting ''" in message and "bare '--no'" in message


# ------------------------------------------------------------------------------------------- mutation audit, round 5
def test_cli_overrides_fills_positional_values_in_order_after_the_named_ones():
    """Checked against ``fire.Fire`` 0.7 on ``run``'s signature: positional values go to the parameters not named,
    in order (``a b c`` is run_id, init_id, final_id; ``--run_id a b`` gives ``b`` to init_id, not run_id)."""
    assert cli_overrides([MAIN, "run", "a", "b", "c", "--config_file", TRAIN]) == (
        TRAIN, {"run_id": "a", "init_id": "b", "final_id": "c"})  # fmt: skip
    assert cli_overrides([MAIN, "run", "--run_id", "a", "b", "--config_file", TRAIN, "--epochs", "2"]) == (
        TRAIN, {"run_id": "a", "init_id": "b", "epochs": 2})  # fmt: skip


def test_the_calls_values_win_over_the_args_files_but_none_does_not(tmp_path):
    """As ``monai.bundle.scripts.update_kwargs``: a value given with the call replaces the args_file's, except None."""
    args = tmp_path / "args.json"
    args.write_text(json.dumps({"run_id": "file_run"}))
    check_setting_names(TRAIN, {"args_file": str(args), "run_id": "my_run", "my_run": []})  # the call's run_id
    assert "'file_run'" in _refused(TRAIN, {"args_file": str(args), "run_id": "my_run", "file_run": []})
    check_setting_names(TRAIN, {"args_file": str(args), "run_id": None, "file_run": []})  # None: the file's run_id


def _causes(error: BaseException) -> str:
    messages = []
    while error is not None:
        messages.append(str(error))
        error = error.__cause__ or error.__context__
    return "\n".join(messages)


@pytest.mark.filterwarnings("ignore:parsing config_file")  # MONAI's trust notice for our own test config
def test_a_bundle_run_inside_a_bundle_run_checks_its_own_arguments(tmp_path):
    """The check reads the innermost ``create_workflow`` call (the workflow being initialised), not the outer run's:
    here a bundle whose ``initialize`` runs another bundle, so both calls are on the stack."""
    from monai.bundle import run

    (tmp_path / "inner").mkdir()
    (tmp_path / "outer").mkdir()
    inner = _tiny_bundle(tmp_path / "inner")
    outer = _tiny_bundle(tmp_path / "outer")
    config = json.loads(outer.read_text())
    config["imports"].append("$import monai.bundle")
    config["inner"] = str(inner)
    config["initialize"].append("$monai.bundle.run(config_file=@inner, epoch=3)")
    outer.write_text(json.dumps(config))
    with pytest.raises(RuntimeError) as info:
        run(config_file=str(outer), epochs=2)
    assert "'epoch' (did you mean 'epochs'?)" in _causes(info.value)
    assert not (tmp_path / "inner" / "ran.txt").exists()


@pytest.mark.filterwarnings("ignore:parsing config_file")  # MONAI's trust notice for our own test config
def test_a_programmatic_run_workflow_knows_its_workflow_classs_arguments(tmp_path):
    """``run_workflow(workflow_name=MyWorkflow, verbose_steps=2)``: MONAI passes ``verbose_steps`` to the class, so
    the check of the running call (which pops ``workflow_name`` from its arguments) must still know the class."""
    from monai.bundle import ConfigWorkflow, run_workflow

    class WithOption(ConfigWorkflow):
        def __init__(self, config_file=None, verbose_steps: int = 0, **override):
            super().__init__(config_file=config_file, **override)

    config = _tiny_bundle(tmp_path)
    run_workflow(workflow_name=WithOption, config_file=str(config), verbose_steps=2, epochs=5)
    assert (tmp_path / "ran.txt").read_text() == "5"
    assert "'verbose_step'" in _run_refused(run_workflow, workflow_name=WithOption, config_file=str(config),
                                            verbose_step=2)  # fmt: skip


def test_a_setting_given_as_none_is_no_setting():
    """MONAI's ``update_kwargs`` drops every argument given as ``None`` before the workflow sees it, so such an id is
    never added to the config: the check does not refuse it (``monai.bundle.run(..., epoch=None)`` runs as MONAI runs
    it), while a real value for the same misspelt id is still refused."""
    check_setting_names(TRAIN, {"epoch": None, "run_id": None})
    assert "'epoch'" in _refused(TRAIN, {"epoch": 2})


def test_a_new_id_that_only_a_dict_key_names_is_refused(tmp_path):
    """MONAI resolves ``@name`` in config values only: a key ``"@scale"`` stays the text ``"@scale"`` and never reads
    ``scale``, so ``--scale 2`` is added silently and unused, and must be refused (it was accepted as referenced). A
    value referring to it, in the same dict, is read and still makes it a setting."""
    from monai.bundle import ConfigParser

    cfg = tmp_path / "keys.json"
    cfg.write_text(json.dumps({"weights": {"@scale": 1.0, "$@scale": 2.0}}))
    parser = ConfigParser(ConfigParser.load_config_file(cfg))
    parser["scale"] = 3.0
    assert parser.get_parsed_content("weights") == {"@scale": 1.0, "$@scale": 2.0}  # MONAI read no key
    assert "'scale'" in _refused(str(cfg), {"scale": 3.0})
    cfg.write_text(json.dumps({"weights": {"@scale": "@scale"}}))
    check_setting_names(str(cfg), {"scale": 3.0})  # the value refers to it
