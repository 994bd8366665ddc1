"""The ```python blocks of the Markdown docs (README.md, docs/*.md, bundles/*/docs/README.md, ...) are run.

Every block is executed in a fresh namespace, in a temporary working directory, seeded, with one intra-op thread.
Fragments that use names defined in the prose or in an earlier block get them from :data:`PRELUDES`, keyed by
``(file, marker)`` where ``marker`` is a substring that occurs in exactly one block of that file: the prelude runs in
its own namespace and only the block's *free* names (used but never bound by the block) are copied over, so a prelude
can neither replace what the block itself demonstrates nor supply an import the block forgot. Blocks that are
signatures rather than programs are checked against the callable's real signature (:data:`SIGNATURES`); blocks that
cannot run here for a stated reason are in :data:`SKIPS`. A new block that is none of these runs as it is, so it
fails until it runs on its own or is listed; stale entries (a marker that matches no block, or several) fail too.

A line ``name = ...  # (2, 3, 64)`` also checks ``tuple(name.shape) == (2, 3, 64)``, so documented shapes cannot rot.

The documented ``python -m monai.bundle run`` command lines (fenced or inline, also under ``torchrun``) are parsed
as Python Fire parses them and checked against the bundle configs they name: the files exist and every setting is
one the bundles accept (:func:`monai_gmr.workflows.check_setting_names`), so a copied doc command is not refused.
"""

from __future__ import annotations

import ast
import builtins
import inspect
import os
import random
import re
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

# tracing the documented networks prints TracerWarnings for their input-shape checks (harmless, see docs/networks.md)
pytestmark = pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")

ROOT = Path(__file__).resolve().parents[1]

#: folders never searched for Markdown files (besides hidden ones and virtual environments)
_PRUNE = {"build", "dist", "node_modules", "__pycache__", "site-packages"}
#: opening fence of a Python block: ``` or ~~~, optionally indented (inside a list), info string python / py / python3
_OPEN = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?:python3?|py)\b.*$", re.IGNORECASE)

# fmt: off
#: (file, marker) -> source defining the free names of a fragment, with the smallest valid values
PRELUDES: dict[tuple[str, str], str] = {
    ("docs/networks.md", "net.forward_features(x)"): """
import torch
x = torch.randn(1, 3, 32, 32)
""",
    ("docs/networks.md", "monai_gmr.export_dense(net)"): """
import torch
from monai_gmr.nets import get_network
net = get_network("gmr_unet_tiny", in_channels=1, out_channels=2)
example = torch.randn(1, 1, 32, 32)
""",
    ("docs/robustness.md", "RotationTTAInferer(inferer="): """
import torch
from monai_gmr.nets import get_network
network = get_network("gmr_unet_tiny", in_channels=3, out_channels=2)
images = torch.randn(1, 3, 64, 64)
""",
    ("docs/robustness.md", "rotation_robustness(net, val_loader"): """
import torch
from monai_gmr.evaluation import rotation_robustness
from monai_gmr.nets import get_network
net = get_network("gmr_unet_tiny", in_channels=3, out_channels=2)
_label = torch.zeros(1, 1, 32, 32, dtype=torch.long)
_label[..., 8:16, 8:20] = 1
_label[..., 20:28, 4:12] = 2
val_loader = [{"image": torch.randn(1, 3, 32, 32), "label": _label}]
_plain = get_network("gmr_unet_tiny", in_channels=3, out_channels=2)
plain_res, aug_res = (rotation_robustness(_plain, val_loader, angles=(0, 45), metrics=("dice",),
                                          label_transform=lambda y: (y > 0).long(), model_name=_name)
                      for _name in ("plain", "plain_aug"))
""",
    ("docs/robustness.md", "slide_map_consistency(\"slide.svs\""): """
import numpy as np
import torch
from monai_gmr.data import write_pyramidal_tiff
from monai_gmr.nets import get_network
_yy, _xx = np.mgrid[:288, :384]
_image = np.full((288, 384, 3), 236, np.uint8)
_image[(_yy - 144) ** 2 + (_xx - 192) ** 2 < 120 ** 2] = (200, 90, 160)   # a disk of tissue on a white background
write_pyramidal_tiff("slide.svs", _image, tile_size=64, n_levels=1, compression="deflate")
net = get_network("gmr_resnet18_tiny", num_classes=2).eval()
""",
}

#: (file, marker) -> dotted paths of the callable whose signature the block documents and, when it forwards
#: ``**kwargs``, of the callable that receives them (the wrapper's own arguments first, then the receiver's other
#: arguments less those the wrapper fixes); defaults are compared literally, ``...`` documents an argument without a
#: usable default (none, or ``None``)
SIGNATURES: dict[tuple[str, str], tuple[str, ...]] = {
    ("docs/gcnn.md", "GCNNUNet(spatial_dims=2"): ("monai_gmr.nets.GCNNUNet",),
    ("docs/gcnn.md", "gcnn_resnet18(spatial_dims=2"): ("monai_gmr.nets.gcnn_resnet18", "monai_gmr.nets.GCNNResNet"),
}
#: arguments of a ``**kwargs`` receiver that its wrapper sets itself (not documented with the wrapper)
FIXED_BY_WRAPPER = {"layers"}

#: (file, marker) -> (reason, condition): the block is skipped when ``condition()`` is true
SKIPS: dict[tuple[str, str], tuple[str, Callable[[], bool]]] = {
    ("docs/robustness.md", "rotation_robustness(net, val_loader"): (
        'needs a CUDA device (device="cuda")', lambda: not torch.cuda.is_available()),
}
# fmt: on


@dataclass(frozen=True)
class Block:
    """One fenced Python block of a Markdown file.

    Attributes:
        path: file path relative to the project root, POSIX style.
        index: 0-based index of the block among the file's Python blocks.
        line: 1-based line of the block's first code line in the file.
        source: the code, dedented by the fence's indentation.
    """

    path: str
    index: int
    line: int
    source: str

    @property
    def id(self) -> str:
        return f"{self.path.removeprefix('docs/')}-{self.index}"

    def where(self) -> str:
        return f"{self.path} block {self.index} (line {self.line})"


def markdown_files(root: Path = ROOT) -> list[Path]:
    """The project's Markdown files, skipping hidden folders, virtual environments and build outputs."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(
            d for d in dirs
            if not d.startswith(".") and d not in _PRUNE and not d.endswith(".egg-info")
            and not (Path(folder, d) / "pyvenv.cfg").exists()
        )  # fmt: skip
        found += [Path(folder, f) for f in sorted(files) if f.lower().endswith(".md")]
    return found


def extract_blocks(text: str, path: str) -> list[Block]:
    """The fenced Python blocks of Markdown ``text``.

    Raises:
        ValueError: a Python block that is never closed.
    """
    lines, blocks, i = text.splitlines(), [], 0
    while i < len(lines):
        m = _OPEN.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, start = m["indent"], m["fence"], i + 1
        close = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        end = next((j for j in range(start, len(lines)) if close.match(lines[j])), None)
        if end is None:
            raise ValueError(f"{path}: the Python block opened at line {i + 1} is never closed.")
        body = [ln[len(indent):] if ln.startswith(indent) else ln.lstrip() for ln in lines[start:end]]
        blocks.append(Block(path, len(blocks), start + 1, "\n".join(body) + "\n"))
        i = end + 1
    return blocks


def all_blocks(root: Path = ROOT) -> list[Block]:
    return [b for f in markdown_files(root)
            for b in extract_blocks(f.read_text(encoding="utf-8"), f.relative_to(root).as_posix())]  # fmt: skip


BLOCKS = all_blocks()


def _entry(table: dict[tuple[str, str], Any], block: Block) -> Any:
    hits = [v for (path, marker), v in table.items() if path == block.path and marker in block.source]
    return hits[0] if hits else None


def free_names(source: str) -> set[str]:
    """Names the code reads but never binds anywhere (nor are builtins): what it expects from its context."""
    tree, loaded, bound = ast.parse(source), set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, ast.alias):
            bound.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return loaded - bound - set(dir(builtins))


_SHAPE_COMMENT = re.compile(
    r"^(?P<code>(?P<name>[A-Za-z_]\w*)\s*=[^#]*?)\s*#\s*\((?P<shape>\d+(?:\s*,\s*\d+)*),?\)\s*$"
)


def with_shape_checks(source: str) -> str:
    """``name = expr  # (1, 2, 64)`` lines also assert the documented shape (on the same line: tracebacks still
    point at the Markdown line)."""
    out = []
    for line in source.splitlines():
        m = _SHAPE_COMMENT.match(line)
        if m:
            try:
                ast.parse(m["code"])
            except SyntaxError:  # a line of a longer statement: leave it alone
                m = None
        if m:
            shape = tuple(int(s) for s in m["shape"].split(","))
            line = (f"{m['code']}; assert tuple({m['name']}.shape) == {shape}, "
                    f"f'documented shape {shape}, got {{tuple({m['name']}.shape)}}'")  # fmt: skip
        out.append(line)
    return "\n".join(out) + "\n"


def _run(source: str, filename: str, line: int, namespace: dict[str, Any], what: str) -> None:
    code = compile("\n" * (line - 1) + source, filename, "exec")  # line numbers of the Markdown file
    try:
        exec(code, namespace)  # noqa: S102
    except Exception as e:  # noqa: BLE001 - any failure of a docs block is reported as the test's failure
        error = f"{what} raised {type(e).__name__}: {e}\n" + "".join(
            traceback.format_exception(type(e), e, e.__traceback__.tb_next))
    else:
        return
    pytest.fail(error, pytrace=False)  # outside the except clause: no "during handling" chain in the report


@pytest.fixture
def docs_env(tmp_path, monkeypatch):
    """Temporary cwd, seeded RNGs, one intra-op thread (restored afterwards)."""
    monkeypatch.chdir(tmp_path)
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tmp_path
    torch.set_num_threads(n)


def test_blocks_found():
    """The extraction works: the files known to hold Python blocks still do (so an empty parametrization cannot
    pass), and an unclosed block is an error."""
    per_file = {p: sum(b.path == p for b in BLOCKS) for p in ("README.md", "docs/networks.md", "docs/robustness.md")}
    assert all(per_file.values()), f"no ```python block found in {[p for p, n in per_file.items() if not n]}"
    blocks = extract_blocks("x\n```python\na = 1\n```\n  ```py\n  b = a\n  ```\n```bash\nls\n```\n", "t.md")
    assert [(b.line, b.source) for b in blocks] == [(3, "a = 1\n"), (6, "b = a\n")]
    with pytest.raises(ValueError, match="never closed"):
        extract_blocks("```python\na = 1\n", "t.md")


@pytest.mark.parametrize("table", ["PRELUDES", "SIGNATURES", "SKIPS"])
def test_entries_match_one_block(table, docs_env):
    """Every entry names exactly one block (a stale or ambiguous marker fails), and a prelude supplies at least one
    of its block's free names."""
    for (path, marker), value in globals()[table].items():
        hits = [b for b in BLOCKS if b.path == path and marker in b.source]
        assert len(hits) == 1, f"{table}[{path!r}, {marker!r}] matches {len(hits)} blocks, expected exactly 1"
        if table == "PRELUDES":
            ns: dict[str, Any] = {}
            exec(compile(value, f"<prelude {path}>", "exec"), ns)  # noqa: S102
            assert free_names(hits[0].source) & ns.keys(), f"{table}[{path!r}, {marker!r}] supplies no free name"


def test_shape_comment_check():
    src = with_shape_checks("import torch\ny = torch.zeros(1, 2)   # (1, 3)\n")
    with pytest.raises(AssertionError, match=r"documented shape \(1, 3\), got \(1, 2\)"):
        exec(src, {})  # noqa: S102


def _resolve(target: str) -> Any:
    module, _, name = target.rpartition(".")
    return getattr(__import__(module, fromlist=[name]), name)


def signature_params(targets: tuple[str, ...]) -> dict[str, inspect.Parameter]:
    """The named parameters of ``targets[0]``, followed by those of the callables its ``**kwargs`` go to."""
    params: dict[str, inspect.Parameter] = {}
    for i, target in enumerate(targets):
        sig = inspect.signature(_resolve(target)).parameters.values()
        for p in sig:
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in params \
                    and not (i and p.name in FIXED_BY_WRAPPER):
                params[p.name] = p
        if not any(p.kind is p.VAR_KEYWORD for p in sig):
            assert i == len(targets) - 1, f"{target} takes no **kwargs to forward to {targets[i + 1]}"
            break
    return params


def _check_signature(block: Block, targets: tuple[str, ...]) -> None:
    body = ast.parse(block.source).body
    assert len(body) == 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Call), \
        f"{block.where()}: a signature block must be one call expression"
    call, name = body[0].value, targets[0].rpartition(".")[2]
    assert ast.unparse(call.func) == name and not call.args, f"{block.where()}: expected {name}(keyword=default, ...)"
    params = signature_params(targets)
    documented = [kw.arg for kw in call.keywords]
    assert documented == list(params), (
        f"{block.where()}: documents the arguments {documented}, {' -> '.join(targets)} takes {list(params)}")
    for kw in call.keywords:
        doc, real = ast.literal_eval(kw.value), params[kw.arg].default
        if doc is Ellipsis:
            assert real is inspect.Parameter.empty or real is None, (
                f"{block.where()}: {kw.arg}=... documented as required, the default is {real!r}")
        else:
            assert real is not inspect.Parameter.empty and type(real) is type(doc) and real == doc, (
                f"{block.where()}: {kw.arg}={doc!r} documented, the default is {real!r}")


def test_signature_check_fails_on_a_wrong_default():
    block = Block("t.md", 0, 1, "gcnn_resnet18(spatial_dims=3, in_channels=3)\n")
    with pytest.raises(AssertionError, match="documents the arguments"):
        _check_signature(block, ("monai_gmr.nets.gcnn_resnet18",))
    block = Block("t.md", 0, 1, "gcnn_resnet18(spatial_dims=3, in_channels=3, num_classes=..., group='p4m')\n")
    with pytest.raises(AssertionError, match="spatial_dims=3 documented, the default is 2"):
        _check_signature(block, ("monai_gmr.nets.gcnn_resnet18",))


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_docs_block(block: Block, docs_env):
    skip = _entry(SKIPS, block)
    if skip is not None and skip[1]():
        pytest.skip(f"{block.where()}: {skip[0]}")
    signature = _entry(SIGNATURES, block)
    if signature is not None:
        _check_signature(block, signature)
        return
    namespace: dict[str, Any] = {"__name__": "__docs__"}
    prelude = _entry(PRELUDES, block)
    if prelude is not None:
        scratch: dict[str, Any] = {}
        _run(prelude, f"<prelude of {block.where()}>", 1, scratch, f"the prelude of {block.where()}")
        namespace.update({k: scratch[k] for k in free_names(block.source) if k in scratch})
        torch.manual_seed(0)
    _run(with_shape_checks(block.source), str(ROOT / block.path), block.line, namespace, block.where())


# ------------------------------------------------------------------------------- documented bundle command lines
#: a ``python -m monai.bundle run ...`` / ``torchrun ... -m monai.bundle run ...`` command in a doc line (after the
#: ``\``-continued lines are joined); an inline one ends at its closing backtick, a shell comment is cut
_BUNDLE_COMMAND = re.compile(r"(?:python3? -m|torchrun\b[^`]*?-m) monai\.bundle (run(?:_workflow|-workflow)?)\b([^`]*)")
#: the placeholder the top-level README uses for "either bundle"
_ANY_BUNDLE = "bundles/<name>/"


@dataclass(frozen=True)
class Command:
    """One documented bundle command line: its Markdown file (relative, POSIX), 1-based line and argv after
    ``python -m monai.bundle``."""

    path: str
    line: int
    argv: tuple[str, ...]

    def where(self) -> str:
        return f"{self.path} line {self.line}: monai.bundle {' '.join(self.argv)}"


def extract_commands(text: str, path: str) -> list[Command]:
    """The ``monai.bundle run`` command lines of Markdown ``text`` that set a ``--config_file`` (prose mentions of
    the command without one are not commands)."""
    import shlex

    found, line_no, pending, start = [], 0, "", 0
    for line_no, line in enumerate(text.splitlines(), 1):
        if not pending:
            start = line_no
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full, pending = pending + line, ""
        for m in _BUNDLE_COMMAND.finditer(full):
            rest = re.split(r"\s#", m[2], maxsplit=1)[0]
            argv = (m[1], *shlex.split(rest))
            if any(a == "--config_file" or a.startswith("--config_file=") for a in argv):
                found.append(Command(path, start, argv))
    return found


def _command_config_files(command: Command, config_file: Any) -> list[list[Path]]:
    """The config files a documented command means, once per bundle it may run in: relative to the bundle of a
    bundle README, else to the project root, else (docs/*.md written from inside a bundle folder) to every bundle
    that has them; ``bundles/<name>/`` stands for each bundle."""
    files = [str(f) for f in (config_file if isinstance(config_file, (list, tuple)) else [config_file])]
    bundles = sorted(p for p in (ROOT / "bundles").iterdir() if (p / "configs").is_dir())
    if command.path.startswith("bundles/"):
        bases = [ROOT / Path(command.path).parents[1]]
    elif any(_ANY_BUNDLE in f for f in files):
        return [[ROOT / f.replace(_ANY_BUNDLE, f"bundles/{b.name}/") for f in files] for b in bundles]
    elif all((ROOT / f).is_file() for f in files):
        bases = [ROOT]
    else:
        bases = [b for b in bundles if all((b / f).is_file() for f in files)]
    return [[base / f for f in files] for base in bases]


COMMANDS = [c for f in markdown_files() for c in extract_commands(f.read_text(encoding="utf-8"),
                                                                   f.relative_to(ROOT).as_posix())]  # fmt: skip


def test_commands_found():
    """The extraction works (so an empty parametrization cannot pass): both bundle READMEs still document runs,
    continued lines are joined, inline commands end at their backtick, comments are cut."""
    per_file = {p: sum(c.path == p for c in COMMANDS) for p in (
        "bundles/gmr_nuclei_segmentation/docs/README.md", "bundles/gmr_wsi_patch_classification/docs/README.md")}
    assert all(n >= 5 for n in per_file.values()), per_file
    text = ("Run `python -m monai.bundle run --config_file a.json --x 1` here, or `python -m monai.bundle run`.\n"
            "```\ntorchrun --nproc_per_node=2 -m monai.bundle run \\\n    --config_file \"['a.json','b.json']\" --y 2  # c\n```\n")
    assert extract_commands(text, "t.md") == [
        Command("t.md", 1, ("run", "--config_file", "a.json", "--x", "1")),
        Command("t.md", 3, ("run", "--config_file", "['a.json','b.json']", "--y", "2")),
    ]


@pytest.mark.parametrize("command", COMMANDS, ids=[f"{c.path.split('/')[-3] if c.path.startswith('bundles/') else c.path}"
                                                   f"-{c.line}" for c in COMMANDS])  # fmt: skip
def test_documented_bundle_command(command: Command):
    """Every documented ``monai.bundle run`` command names existing config files and only settings those configs
    have (the bundles refuse an unknown setting name; a copied doc command must not be refused)."""
    from monai_gmr.workflows import check_setting_names, cli_overrides

    main = str(Path("site-packages", "monai", "bundle", "__main__.py"))
    parsed = cli_overrides([main, *command.argv])
    assert parsed is not None, command.where()
    config_file, overrides = parsed
    choices = _command_config_files(command, config_file)
    assert choices, f"{command.where()}: config files {config_file!r} not found"
    for files in choices:
        missing = [str(f) for f in files if not f.is_file()]
        assert not missing, f"{command.where()}: no such config file {missing}"
        try:
            check_setting_names([str(f) for f in files], overrides)
        except ValueError as e:
            pytest.fail(f"{command.where()}: {e}")


def test_documented_command_check_can_fail():
    """The check above refuses a documented command with a misspelt setting."""
    from monai_gmr.workflows import check_setting_names, cli_overrides

    (command,) = extract_commands(
        "```\npython -m monai.bundle run --config_file configs/train.json --epoch 2\n```\n",
        "bundles/gmr_nuclei_segmentation/docs/README.md")
    config_file, overrides = cli_overrides([str(Path("monai", "bundle", "__main__.py")), *command.argv])
    (files,) = _command_config_files(command, config_file)
    with pytest.raises(ValueError, match="did you mean 'epochs'"):
        check_setting_names([str(f) for f in files], overrides)


def test_robustness_workflow_step_follows_output_dir(tmp_path):
    """docs/robustness.md's ``evaluate.json`` step read ``<bundle_root>/outputs/models/model.pt`` and wrote under
    ``<bundle_root>/eval``: with ``--output_dir`` the step evaluated another run's checkpoint. Both follow
    ``output_dir`` (the bundles' ``ckpt_dir``) now."""
    import json

    from monai.bundle import ConfigParser

    text = (ROOT / "docs" / "robustness.md").read_text()
    start = text.index('"robustness_eval": {"_target_": "monai_gmr.evaluation.RotationRobustnessEvaluator"')
    step = json.loads("{" + text[start : text.index("\n```", start)] + "}")
    parser = ConfigParser()
    parser.read_config(str(ROOT / "bundles" / "gmr_nuclei_segmentation" / "configs" / "train.json"))
    parser.update({**step, "bundle_root": str(tmp_path / "bundle"), "output_dir": str(tmp_path / "run")})
    ckpt = Path(parser.get_parsed_content("robustness_eval#ckpt_path"))
    out = Path(parser.get_parsed_content("robustness_eval#output_dir"))
    assert ckpt == tmp_path / "run" / "models" / "model.pt"
    assert (tmp_path / "run") in out.parents
