"""Refuse misspelt setting names given to a bundle run.

MONAI's ``ConfigWorkflow`` applies the command line's ``--<id> <value>`` pairs (or the keyword arguments of
``monai.bundle.run(...)``) with ``ConfigParser.update``: an id that no config file has (``--epoch 2`` for
``--epochs 2``, ``--learning_rat 1e-3``) is silently *added* to the config and then never read, so the run goes on
with the default setting and no message. The bundles' configs call :func:`check_cli_setting_names` first in their
``initialize`` list, which stops such a run with an error naming the setting and the closest known names, before
anything is trained or written.

- :func:`check_setting_names`: the check itself, for a config file and the overrides given with it;
- :func:`workflow_overrides`: those arguments as MONAI's ``create_workflow`` received them, for the workflow being
  initialised (``python -m monai.bundle run``, ``torchrun -m monai.bundle run``, ``monai.bundle.run(...)``,
  ``run_workflow``, ``create_workflow`` all go through it);
- :func:`cli_overrides`: the same arguments read back from a ``python -m monai.bundle run ...`` command line, the
  way Python Fire (MONAI's command-line front end) parses them;
- :func:`check_cli_setting_names`: the check of the running workflow's arguments, for the configs' ``initialize``
  list.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import os
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "BUNDLE_COMMANDS",
    "run_arguments",
    "check_setting_names",
    "cli_overrides",
    "workflow_overrides",
    "check_cli_setting_names",
]

logger = logging.getLogger(__name__)

#: the ``python -m monai.bundle <command>`` commands that run a bundle config (Fire also accepts ``run-workflow``)
BUNDLE_COMMANDS = ("run", "run_workflow")

#: ``@id`` references anywhere in a config string (MONAI's ``ReferenceResolver.id_matcher`` is ``@\w*(#\w*)*``)
_REFERENCE = re.compile(r"@(\w+)")

#: MONAI's default ids of the expressions a workflow runs (``ConfigWorkflow``: init_id, run_id, final_id)
_DEFAULT_RUN_IDS = {"init_id": "initialize", "run_id": "run", "final_id": "finalize"}


def run_arguments(workflow_name: Any = None) -> frozenset[str]:
    """Names of the arguments of ``monai.bundle.run`` / ``run_workflow`` that are not config settings.

    Read from the signatures of MONAI's ``run``, ``run_workflow``, ``create_workflow`` and ``ConfigWorkflow``
    (every named parameter, not their ``**override``), so a MONAI release that adds one is followed: in MONAI
    1.6 ``run_id``, ``init_id``, ``final_id``, ``meta_file``, ``config_file``, ``logging_file``, ``tracking``,
    ``args_file``, ``workflow_name``, ``workflow_type`` and ``properties_path``.

    Args:
        workflow_name: the ``workflow_name`` of ``run_workflow`` (a class, a ``monai.bundle`` class name or a dotted
            path, as ``monai.bundle.scripts.create_workflow`` finds it): the named parameters of its ``__init__``
            are arguments too (``create_workflow`` passes the keyword arguments to the class). ``None``, or a name
            that cannot be found (MONAI reports it): ``ConfigWorkflow`` only.
    """
    from monai.bundle import ConfigWorkflow
    from monai.bundle.scripts import create_workflow, run, run_workflow

    fns: list[Any] = [run, run_workflow, create_workflow, ConfigWorkflow.__init__]
    workflow = _workflow_class(workflow_name)
    if workflow is not None:
        fns.append(workflow.__init__)
    names: set[str] = set()
    for fn in fns:
        for p in inspect.signature(fn).parameters.values():
            if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                names.add(p.name)
    return frozenset(names)


def _workflow_class(workflow_name: Any) -> type | None:
    """The class ``create_workflow`` instantiates for ``workflow_name`` (``None`` when it cannot be found)."""
    if workflow_name is None or isinstance(workflow_name, type):
        return workflow_name
    from pydoc import locate

    from monai.utils import optional_import

    found, has = optional_import("monai.bundle", name=str(workflow_name))
    if not has:
        try:
            found = locate(str(workflow_name))
        except Exception:  # an import error inside the module: MONAI reports it
            found = None
    return found if isinstance(found, type) else None


def _split_first(id: str) -> tuple[str, str]:
    """``("network_def", "#features")`` for ``network_def#features`` or ``network_def::features``."""
    from monai.bundle.reference_resolver import ReferenceResolver

    first = ReferenceResolver.split_id(ReferenceResolver.normalize_id(str(id)))[0]
    return first, str(id)[len(first):]  # the rest as written ("#" and "::" both separate)


def _first_id(id: str) -> str:
    """The top-level part of a config id: ``network_def`` for ``network_def#features`` or ``network_def::features``."""
    return _split_first(id)[0]


def _strings(value: Any, id: str = "") -> Iterator[tuple[str, str, bool]]:
    """Every string in a config value (nested dicts and lists included, dict keys too) as ``(id, string, is_key)``:
    ``id`` the config id of the item it is (of the dict, for a key), ``::``-separated as MONAI's sub-ids."""
    if isinstance(value, str):
        yield id, value, False
    elif isinstance(value, Mapping):
        for k, v in value.items():
            if isinstance(k, str):
                yield id, k, True
            yield from _strings(v, f"{id}::{k}" if id != "" else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _strings(v, f"{id}::{i}" if id != "" else str(i))


def _referenced_ids(value: Any, id: str = "", macros: bool = True) -> set[str]:
    """Top-level ids that ``value`` (the config item ``id``) refers to, as MONAI resolves them.

    ``@name`` / ``@name#...`` in any string value (``$`` expressions too; not in dict keys, which MONAI leaves as
    they are), relative references (``@##name`` in ``a#b`` is
    ``@name``, ``ConfigParser.resolve_relative_ids``), whole-string ``%name...`` macros of the same config (relative
    ones too) and, with ``macros``, the ``@`` references inside the content that a ``%file.json#id`` macro copies
    from another file (MONAI does not expand macros within that content, so they are not followed).
    """
    from monai.bundle import ConfigParser
    from monai.bundle.reference_resolver import ReferenceResolver

    found: set[str] = set()
    for at, s, is_key in _strings(value, ReferenceResolver.normalize_id(str(id))):
        if is_key:  # MONAI resolves references, relative ids and macros in values only: {"@x": 1} keeps its key
            continue
        try:
            s = ConfigParser.resolve_relative_ids(at, s)
        except ValueError:  # out of the config's range: MONAI reports it itself
            pass
        found.update(_REFERENCE.findall(s))
        if macros and s.startswith("%"):
            path, ids = ConfigParser.split_path_id(s[1:])
            if not path:
                if ids:
                    found.add(_first_id(ids))
                continue
            try:  # the other file's content lands in this config: its @references are this config's ids
                found |= _referenced_ids(ConfigParser(ConfigParser.load_config_file(path))[ids], macros=False)
            except Exception:  # a missing file or id: MONAI reports it itself
                pass
    return found


def _tracking_ids(tracking: Any) -> set[str]:
    """Top-level ids that MONAI's experiment tracking (``--tracking mlflow`` or a settings file) adds to the config;
    they can be set on the command line (e.g. ``--experiment_name``)."""
    from monai.bundle import ConfigParser
    from monai.bundle.utils import DEFAULT_EXP_MGMT_SETTINGS

    if tracking is None:
        return set()
    try:
        if isinstance(tracking, str) and tracking in DEFAULT_EXP_MGMT_SETTINGS:
            settings = DEFAULT_EXP_MGMT_SETTINGS[tracking]
        else:
            settings = ConfigParser.load_config_files(tracking)
        return {str(k) for k in settings.get("configs", {})}
    except Exception:  # MONAI reports a bad tracking setting itself
        return set()


def _show(files: Any) -> str:
    """The config files of a ``config_file`` argument, for a message: ``a.json, b.json``."""
    if isinstance(files, (str, os.PathLike)):
        files = str(files).split(",") if not Path(files).is_file() and "," in str(files) else [files]
    return ", ".join(str(f) for f in files)


def check_setting_names(
    config_files: str | os.PathLike | Sequence[str | os.PathLike] | None, overrides: Mapping[str, Any]
) -> None:
    """Refuse override ids that no config file has: MONAI would add them silently and never read them.

    ``overrides`` are the keyword arguments of ``monai.bundle.run(config_file=config_files, **overrides)`` (or of
    ``python -m monai.bundle run``, see :func:`cli_overrides`): MONAI's own arguments (:func:`run_arguments`, e.g.
    ``run_id``, ``meta_file``, ``args_file``) are not settings and are skipped; every other key is an id that
    ``ConfigWorkflow`` sets with ``ConfigParser.update``. An id is accepted when its top-level part (``network_def``
    of ``network_def#features``) is a top-level id of one of ``config_files`` (merged as MONAI merges them, so
    ``evaluate.json`` given with ``train.json`` knows ``train.json``'s ids), ``_meta_``, or a new id that MONAI does
    use: one that a config value or another override refers to (``@name``, ``@name#...`` in any string or ``$``
    expression, a ``%name`` macro), the ``run_id`` / ``init_id`` / ``final_id`` in effect (by default ``run``,
    ``initialize``, ``finalize``), or an id that ``tracking`` adds. Keys and values of an ``args_file`` count as
    overrides too, and its ``config_file`` is used when ``config_files`` is ``None``, as MONAI does
    (``monai.bundle.scripts.create_workflow``); an argument given as ``None`` is dropped, as MONAI's
    ``update_kwargs`` drops it (it sets no id).

    Only names are checked, nothing is parsed or instantiated.

    Args:
        config_files: the ``config_file`` argument: a path, a comma-separated string of paths, or a sequence of
            paths (``monai.bundle.ConfigParser.load_config_files`` reads them), or ``None`` when ``args_file``
            gives it.
        overrides: the other keyword arguments, ``{id: value}``.

    Raises:
        ValueError: one or more override ids are unknown; the message names each with the config files and the
            closest known ids (``did you mean 'epochs'?``).
    """
    from monai.bundle import ConfigParser

    # as monai.bundle.scripts.update_kwargs: an argument given as None is dropped (so it sets no id), and the call's
    # values win over an args_file's
    given = {k: v for k, v in dict(overrides).items() if v is not None}
    args_file = given.get("args_file")
    if args_file is not None:
        from_file = ConfigParser.load_config_file(args_file)
        if not isinstance(from_file, Mapping):
            raise ValueError(f"args_file {args_file!r} must hold a mapping of arguments, got {type(from_file).__name__}")
        given = {**from_file, **given}
        given.pop("args_file", None)
        if config_files is None:
            config_files = from_file.get("config_file")
    if config_files is None:
        raise ValueError("check_setting_names needs config_files (or an args_file that gives config_file)")
    config = ConfigParser.load_config_files(config_files)

    run_args = run_arguments(given.get("workflow_name"))
    settings = {str(k): v for k, v in given.items() if str(k) not in run_args}
    known = {str(k) for k in config} | {ConfigParser.meta_key}
    used = _referenced_ids(config) | _tracking_ids(given.get("tracking"))
    for key, default in _DEFAULT_RUN_IDS.items():
        used.add(str(given.get(key) if given.get(key) is not None else default))

    unknown = []
    for id in settings:
        first, rest = _split_first(id)
        if first in known or first in used:
            continue
        if any(first in _referenced_ids(v, k) for k, v in settings.items() if k != id):
            continue
        close = difflib.get_close_matches(first, sorted(known), n=3)
        hint = f" (did you mean {' or '.join(repr(c + rest) for c in close)}?)" if close else ""
        if not id:  # Fire reads a bare "--noX" as X=False, so a bare "--no" sets the empty name
            hint = " (a bare '--no' on the command line: Fire reads '--noNAME' as NAME=False; write '--NAME false')"
        unknown.append(f"'{id}'{hint}")
    if unknown:
        one = len(unknown) == 1
        raise ValueError(
            f"Unknown setting{'' if one else 's'} {', '.join(unknown)}: no config file ({_show(config_files)}) has "
            f"{'it' if one else 'them'} and nothing refers to {'it' if one else 'them'}. MONAI would add "
            f"{'it' if one else 'them'} to the config silently and run with the default instead. Check the spelling "
            "(a new id is accepted when a config value or another setting refers to it as @name)."
        )


def cli_overrides(argv: Sequence[str] | None = None) -> tuple[Any, dict[str, Any]] | None:
    """The ``config_file`` and the other keyword arguments of a ``python -m monai.bundle run`` command line.

    Reads ``argv`` (default ``sys.argv``) as Python Fire does for ``monai.bundle.__main__`` (``fire.Fire()``):
    ``--key value``, ``--key=value``, a bare ``--flag`` (``True``; ``--noflag`` is ``flag=False``), ``-`` in a key
    read as ``_``, values parsed by Fire's own parser (``"[8, 16]"`` is a list, ``"['a.json','b.json']"`` a list of
    config files, ``1e-3`` a float), positional values given to the command's parameters in order (``run training``
    is ``run_id="training"``) and everything after a lone ``--`` left to Fire. The result is what Fire passes to
    ``monai.bundle.run``/``run_workflow``, ready for :func:`check_setting_names`.

    Args:
        argv: a command line, ``argv[0]`` the program; ``None`` reads ``sys.argv``.

    Returns:
        ``(config_file, overrides)`` (``config_file`` ``None`` when only an ``--args_file`` may give it), or ``None``
        when ``argv`` is not ``python -m monai.bundle run ...`` / ``run_workflow ...`` (``argv[0]`` not MONAI's
        ``monai/bundle/__main__.py``: a script or test calling ``monai.bundle.run(...)``, another command).
    """
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or Path(argv[0]).parts[-3:] != ("monai", "bundle", "__main__.py"):
        return None
    command = argv[1].replace("-", "_")
    if command not in BUNDLE_COMMANDS:
        return None
    from fire.parser import DefaultParseValue
    from monai.bundle import scripts

    args = argv[2:]
    if "--" in args:  # Fire: the arguments after the last lone "--" are Fire's own flags (--help, --verbose, ...)
        args = args[: len(args) - 1 - args[::-1].index("--")]
    kwargs: dict[str, Any] = {}
    positional: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if not _is_flag(arg):
            positional.append(arg)
            i += 1
            continue
        key, eq, value = arg.lstrip("-").partition("=")
        key = key.replace("-", "_")
        bare = not eq and (i + 1 == len(args) or _is_flag(args[i + 1]))
        if not key:  # "--", "---", "--=v": Fire consumes no keyword (nor the value after it) and leaves them over
            i += 1 if eq or bare else 2
            continue
        if bare:  # a bare flag: True, or --noX: X=False
            if key.startswith("no"):
                key, value = key[2:], "False"
            else:
                value = "True"
            i += 1
        elif not eq:
            value = args[i + 1]
            i += 2
        else:
            i += 1
        kwargs[key] = DefaultParseValue(value)
    fn = getattr(scripts, command)
    for p in inspect.signature(fn).parameters.values():  # Fire fills the parameters not named, in order
        if positional and p.kind == p.POSITIONAL_OR_KEYWORD and p.name not in kwargs:
            kwargs[p.name] = DefaultParseValue(positional.pop(0))
    config_file = kwargs.pop("config_file", None)
    return config_file, kwargs


def _is_flag(arg: str) -> bool:
    """Fire's test of a named argument (``fire.core._IsFlag``): ``--x``, or ``-x`` that is not a negative number."""
    return arg.startswith("--") or re.match(r"^-[a-zA-Z]", arg) is not None


def workflow_overrides() -> tuple[Any, dict[str, Any]] | None:
    """The ``config_file`` and the other keyword arguments of the MONAI bundle workflow being created now.

    ``python -m monai.bundle run`` (also under ``torchrun``), ``monai.bundle.run(...)``, ``run_workflow(...)`` and
    ``create_workflow(...)`` all build their workflow in ``monai.bundle.scripts.create_workflow``, which merges an
    ``args_file`` with the given arguments and then calls the workflow's ``initialize()``. Called from a config's
    ``initialize`` list, this finds that call on the stack and returns its arguments exactly as MONAI holds them
    (after Fire's parsing and the ``args_file`` merge), ready for :func:`check_setting_names`.

    Written by hand because MONAI keeps neither the override arguments nor the list of config files on the workflow
    object (``ConfigWorkflow.__init__`` only applies them to its parser), and a check must tell the ids that came
    from the files from those that an override added.

    Returns:
        ``(config_file, overrides)``, ``overrides`` including ``workflow_name``; ``None`` when no
        ``create_workflow`` call is running (a ``ConfigWorkflow`` built and initialised directly, a test calling
        the configs' expressions itself) or it was given no ``config_file``.
    """
    from monai.bundle import scripts

    code = getattr(inspect.unwrap(scripts.create_workflow), "__code__", None)
    frame = inspect.currentframe()
    try:
        while frame is not None:
            if frame.f_code is code:
                found = frame.f_locals
                if "_args" not in found or found.get("config_file") is None:
                    return None
                return found["config_file"], {**found["_args"], "workflow_name": found.get("workflow_name")}
            frame = frame.f_back
        return None
    finally:
        del frame


def check_cli_setting_names() -> None:
    """Refuse a bundle run that sets an unknown id (see :func:`check_setting_names`).

    Meant as the first item of a bundle config's ``initialize`` list (``"$monai_gmr.workflows.check_cli_setting_names()"``):
    it runs before anything is built or trained, reads only the run's arguments and the config files (no config
    item is instantiated, no random number drawn). The arguments are those of the running ``create_workflow`` call
    (:func:`workflow_overrides`: ``python -m monai.bundle run``, also under ``torchrun`` in every process,
    ``monai.bundle.run(...)``, ``run_workflow``, ``create_workflow``); when there is none, those of a ``python -m
    monai.bundle run`` command line (:func:`cli_overrides`). A ``ConfigWorkflow`` built and initialised directly by a
    program is not checked: call ``check_setting_names(config_file, overrides)`` first.

    Raises:
        ValueError: an unknown setting (the message names it and suggests the closest known ids).
    """
    found = workflow_overrides()
    if found is None:  # no create_workflow call on the stack (a MONAI release that builds workflows elsewhere, or a
        found = cli_overrides()  # caller running the configs' expressions itself): read a bundle command line
    if found is None:
        return
    check_setting_names(*found)
    logger.debug("setting names checked: %s", sorted(found[1]))
