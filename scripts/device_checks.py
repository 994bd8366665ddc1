"""The GPU checks of the open issues as one prepared, time-boxed run for the device tool.

A session that is lent a GPU has about 15 minutes of device time in all, at most 10 minutes a command, and the
device machine has neither the project's dependencies (MONAI, Ignite, OpenSlide, ...) nor ``../shared``. This
script does the preparation here and the run there, so a GPU session spends its minutes on measurements:

``prepare`` (here, with network access to PyPI)
    downloads the missing wheels for the device's Python 3.12 (``pip download --only-binary``, pinned to the
    versions installed here), checks that every wheel's requirements are met by the set or by the device image's
    packages, copies the CPM-15 tiles from ``../shared`` into ``.gpu_data/`` (git-ignored), and prints the exact
    ``run`` tool call (command and ``carry``).

``run`` (there)
    installs the wheels into ``/tmp/site``, runs a pre-flight (CUDA visible, Triton importable, one strict
    ``GMRConv(impl="triton")`` forward + backward; exit 2 without running anything if it fails), then runs the
    selected parts one after another under one deadline, with ``MONAI_GMR_REQUIRE_GPU=1`` (CUDA tests fail rather
    than skip) and ``MONAI_GMR_TRITON_STRICT=1`` (no silent fallback from Triton to dense). A part is time-boxed to
    twice its estimate (at least estimate + 60 s), skipped when its estimate no longer fits, and stopped at the
    deadline. After every part
    the results are packed again into ``$OUT/device_results.tar.gz`` with ``$OUT/device_summary.{json,md}``
    (part, issue, return code, seconds, command), so a command stopped by the tool's limit still returns what was
    finished. Unpack with ``tar xzf device_results.tar.gz``.

Parts, in the default order (estimates are planning numbers, not measurements)::

    gpu_tests       issue 7/2  pytest -m gpu (Triton and CUDA paths)               ~150 s
    bench_nets      issue 3    GMRUNet vs BasicUNet, GMR-ResNet18 vs ResNet18     ~200 s
    wsi_throughput  issue 6    slide inference patches/s, gmr_resnet18 vs resnet18 ~90 s
    triton_unet     issue 7    GMRUNet training step, dense vs Triton             ~90 s
    robustness      issue 4    36-angle evaluation cost vs plain forwards         ~60 s
    nuclei          issue 5    CPM-15 benchmark (3 models; --nuclei-epochs)       ~480 s
    compare         issue 8    plain / aug / Symm / p4m / GMR comparison          ~300 s
    wsi_full        issue 6    WSI bundle defaults: train + evaluate, 2 models    ~480 s
    compile_tests   issue 3    torch.compile (inductor) on CUDA, 3 GMR paths      ~90 s
    bench_compile   issue 3    compiled vs eager U-Net throughput on CUDA          ~180 s

Example (from the repository root)::

    python scripts/device_checks.py prepare                       # here: wheels + data, prints the tool call
    python3 scripts/device_checks.py run --parts gpu_tests,bench_nets,wsi_throughput --deadline-s 540   # there
"""

from __future__ import annotations

import argparse
import email.parser
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEEL_DIR = ROOT / ".whl"
DATA_DIR = ROOT / ".gpu_data"
SHARED = ROOT.parent / "shared"

__all__ = ["Part", "PARTS", "WHEELS", "DEVICE_PACKAGES", "command", "run_parts", "missing_requirements", "main"]

logger = logging.getLogger("monai_gmr.device_checks")

#: Distributions the device image lacks that the checks import (MONAI and its readers, Ignite, the bundle CLI's
#: ``fire``, JPEG tiles for the synthetic slides via ``imagecodecs``, metadata checks via ``jsonschema``). ``itk``
#: (over 100 MB of wheels) is left out: no check reads an ITK-only format.
WHEELS = (
    "monai", "pytorch-ignite", "nibabel", "openslide-python", "openslide-bin", "imagecodecs", "fire", "termcolor",
    "jsonschema", "jsonschema-specifications", "referencing", "rpds-py",
)  # fmt: skip

#: Distributions of the device image (docs of the device tool, package list read on 2026-11-17), normalised names.
DEVICE_PACKAGES = frozenset(
    """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
    charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
    cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
    formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
    imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
    lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
    matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
    networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc
    nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse
    nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir
    onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging
    pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow
    pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov
    pytest-mock pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu
    safetensors scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers
    setuptools shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
    tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio
    torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer typing-extensions
    typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp""".split()
)

DEVICE_PYTHON = "3.12"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64", "manylinux_2_31_x86_64", "manylinux_2_34_x86_64", "manylinux_2_35_x86_64")  # fmt: skip


@dataclass(frozen=True)
class Part:
    """One device check: ``argv`` (``{py}``, ``{work}``, ``{data}``, ``{epochs}`` are filled in), issue, estimate."""

    name: str
    issue: str
    estimate_s: float
    argv: tuple[str, ...]
    description: str


PARTS: dict[str, Part] = {
    p.name: p
    for p in (
        Part("gpu_tests", "7, 2", 150.0, ("{py}", "-m", "pytest", "-q", "-rs", "-m", "gpu", "-p", "no:cacheprovider", "{xdist}",
                                         "tests/functional/test_triton_conv.py"),
             "every CUDA test (Triton correctness of the final tile defaults, CUDA dispatch, AMP)"),
        Part("bench_nets", "3", 200.0, ("{py}", "scripts/bench_nets.py", "--device", "cuda", "--out", "{work}/bench_nets"),
             "training/inference throughput and peak memory, GMR nets vs MONAI nets"),
        Part("wsi_throughput", "6", 90.0,
             ("{py}", "scripts/benchmark_wsi.py", "--device", "cuda", "--skip-training", "--out", "{work}/wsi_throughput"),
             "slide inference patches/s including reading, gmr_resnet18 vs MONAI resnet18"),
        Part("triton_unet", "7", 90.0,
             ("{py}", "scripts/bench_triton.py", "--out", "{work}/triton_unet", "--kernels", "9", "--shapes3d", "",
              "--repeats", "10", "--unet"),
             "k = 9 conv timings and GMRUNet training steps, dense vs Triton"),
        Part("robustness", "4", 60.0,
             ("{py}", "scripts/bench_robustness.py", "--device", "cuda", "--data", "cpm15", "--cpm15-dir",
              "{data}/cpm15_nuclei_he", "--net", "gmrunet", "--size", "448", "--n_images", "8",
              "--out", "{work}/robustness/bench_robustness_cuda.json"),
             "cost of the 36-angle robustness evaluation vs plain forward passes"),
        Part("nuclei", "5", 480.0,
             ("{py}", "scripts/benchmark_nuclei.py", "--device", "cuda", "--data", "{data}/cpm15_nuclei_he",
              "--epochs", "{epochs}", "--out", "{work}/nuclei"),
             "CPM-15: GMRUNet vs BasicUNet vs BasicUNet + rotation augmentation, 36 angles + flips"),
        Part("compare", "8", 300.0,
             ("{py}", "scripts/compare_equivariant.py", "--device", "cuda", "--cpm15-dir", "{data}/cpm15_nuclei_he",
              "--out", "{work}/compare"),
             "plain / plain + aug / Symm / p4m G-CNN / GMR on nuclei, CPM-15 and WSI patches"),
        Part("wsi_full", "6", 480.0, ("{py}", "scripts/benchmark_wsi.py", "--device", "cuda", "--out", "{work}/wsi_full"),
             "WSI bundle defaults: throughput, then train + evaluate gmr_resnet18 and resnet18 (36 angles)"),
        Part("compile_tests", "3", 90.0,
             ("{py}", "-m", "pytest", "-q", "-rs", "-m", "gpu", "-p", "no:cacheprovider", "tests/nn/test_compile.py"),
             "inductor on CUDA: GMR layers on the dense, rings and triton paths match eager"),
        Part("bench_compile", "3", 180.0,
             ("{py}", "scripts/bench_nets.py", "--device", "cuda", "--suites", "unet", "--compile",
              "--out", "{work}/bench_compile"),
             "compiled (inductor) vs eager GMRUNet / BasicUNet throughput on CUDA"),
    )
}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        msg = email.parser.Parser().parsestr(z.read(meta).decode("utf-8", "replace"))
    return msg.get_all("Requires-Dist") or []


def missing_requirements(wheels: list[Path], available: frozenset[str] = DEVICE_PACKAGES, python: str = DEVICE_PYTHON) -> dict[str, list[str]]:
    """``{wheel file: [unmet requirement, ...]}``: each wheel's unconditional requirements (and those whose markers hold
    on Linux x86_64 with ``python``) that neither the wheel set nor ``available`` provides (names only, no versions)."""
    from packaging.markers import Marker
    from packaging.requirements import Requirement

    env = {"python_version": python, "python_full_version": python + ".0", "sys_platform": "linux", "platform_system": "Linux",
           "platform_machine": "x86_64", "os_name": "posix", "implementation_name": "cpython", "extra": ""}  # fmt: skip
    have = set(available) | {_norm(w.name.split("-")[0]) for w in wheels}
    out: dict[str, list[str]] = {}
    for w in wheels:
        for line in _requirements(w):
            req = Requirement(line)
            if req.marker is not None and not Marker(str(req.marker)).evaluate(env):
                continue
            if _norm(req.name) not in have:
                out.setdefault(w.name, []).append(str(req))
    return out


def _installed_version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def prepare(args: argparse.Namespace) -> int:
    """Download the wheels, check their requirements, copy the data, print the device call."""
    WHEEL_DIR.mkdir(exist_ok=True)
    specs = []
    for d in WHEELS:
        v = _installed_version(d)
        specs.append(f"{d}=={v}" if v else d)
    if not args.skip_download:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
               DEVICE_PYTHON, "--implementation", "cp", "-d", str(WHEEL_DIR)]  # fmt: skip
        for p in PLATFORMS:
            cmd += ["--platform", p]
        for s in specs:  # one at a time: a failure names the distribution
            r = subprocess.run(cmd + [s], capture_output=True, text=True)
            if r.returncode != 0:
                logger.error("pip download %s failed:\n%s", s, r.stderr[-2000:])
                return 1
    wheels = sorted(WHEEL_DIR.glob("*.whl"))
    names = [_norm(w.name.split("-")[0]) for w in wheels]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        logger.error("%s holds two versions of %s: remove the older wheel(s), the device install takes one of each", WHEEL_DIR, dupes)
        return 1
    unmet = missing_requirements(wheels)
    for w, reqs in unmet.items():
        logger.warning("%s needs %s, which neither %s nor the device image provides", w, reqs, WHEEL_DIR.name)
    cpm = SHARED / "data" / "cpm15_nuclei_he"
    if cpm.is_dir():
        dst = DATA_DIR / "cpm15_nuclei_he"
        for sub in ("images", "labels"):  # masks_txt (13 MB of ASCII) is not needed: labels/ holds the same ids
            shutil.copytree(cpm / sub, dst / sub, dirs_exist_ok=True)
        for f in ("pairs.csv", "SOURCE.txt"):
            if (cpm / f).is_file():
                shutil.copy2(cpm / f, dst / f)
    else:
        logger.warning("%s not found: the nuclei, robustness and compare parts will have no CPM-15 data", cpm)
    size = sum(f.stat().st_size for d in (WHEEL_DIR, DATA_DIR) if d.is_dir() for f in d.rglob("*") if f.is_file())
    logger.info("wheels: %d files; carried in all (wheels + data): %.1f MiB (the device tool carries at most 64 MiB "
                "including the working tree)", len(wheels), size / 2**20)  # fmt: skip
    parts = args.parts or "gpu_tests,bench_nets,wsi_throughput,triton_unet"
    # the CPM-15 copy only travels when a chosen part reads it (transfers count against the device time)
    needs_data = any("{data}" in a for n in parts.split(",") if n.strip() in PARTS for a in PARTS[n.strip()].argv)
    print(json.dumps({"command": f"python3 scripts/device_checks.py run --parts {parts} --deadline-s 540",
                      "carry": [".whl", ".gpu_data"] if needs_data else [".whl"], "timeout_s": 600}, indent=2))  # fmt: skip
    return 1 if unmet else 0


def _install_wheels(site: Path) -> None:
    wheels = sorted(WHEEL_DIR.glob("*.whl"))
    if not wheels:
        logger.warning("no wheels in %s: using the packages already installed", WHEEL_DIR)
        return
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
           "--upgrade", "--target", str(site)] + [str(w) for w in wheels]  # fmt: skip
    subprocess.run(cmd, check=True)


#: files left out of the results tarball (slides, checkpoints, maps): one tarball over the tool's 16 MiB per-file
#: limit would lose every result
BULKY = (".tif", ".tiff", ".svs", ".pt", ".pth", ".npy", ".npz", ".h5")


def _replace_atomically(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def _pack(work: Path, out: Path, records: list[dict]) -> None:
    """Write ``device_summary.{json,md}`` and ``device_results.tar.gz`` (the files under ``work`` but
    :data:`BULKY` ones) into ``out``, each atomically. Standard library only (written by hand rather than with
    ``monai_gmr.utils``): packing must work even when the package or its dependencies fail to import there."""
    out.mkdir(parents=True, exist_ok=True)
    lines = ["| part | issue | status | rc | seconds | command |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['part']} | {r['issue']} | {r['status']} | {r.get('rc', '')} | {r.get('seconds', '')} | "
              f"`{r.get('command', '')}` |" for r in records]  # fmt: skip
    _replace_atomically(out / "device_summary.json", lambda t: t.write_text(json.dumps(records, indent=2)))
    _replace_atomically(out / "device_summary.md", lambda t: t.write_text("\n".join(lines) + "\n"))

    def tar_work(t: Path) -> None:
        with tarfile.open(t, "w:gz") as tar:
            tar.add(work, arcname="device_results",
                    filter=lambda info: None if info.isfile() and info.name.lower().endswith(BULKY) else info)

    _replace_atomically(out / "device_results.tar.gz", tar_work)


def command(part: Part, fill: dict[str, str]) -> list[str]:
    """``part.argv`` with the placeholders filled in; a placeholder that fills to ``""`` on its own is dropped."""
    return [a.format(**fill) for a in part.argv if not (a.startswith("{") and a.endswith("}") and fill.get(a[1:-1]) == "")]


def _run_one(argv: list[str], log: Path, env: dict[str, str], timeout: float) -> int | None:
    """Run ``argv`` in its own process group, output to ``log``; on timeout kill the whole group (the benchmarks
    start bundle subprocesses) and return ``None``."""
    with open(log, "w") as f:
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT), start_new_session=True)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            f.write(f"\n[device_checks] stopped at the deadline after {timeout:.0f} s\n")
            return None


def run_parts(parts: list[Part], work: Path, out: Path, deadline_s: float, env: dict[str, str], fill: dict[str, str]) -> list[dict]:
    """Run ``parts`` in order under one deadline (seconds from now); logs and outputs under ``work``; packed into
    ``out`` after every part. A part whose estimate exceeds the time left is skipped (a later, shorter one may still
    run). Returns one record per part (status ``ok``, ``failed``, ``timeout`` or ``skipped``)."""
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    records: list[dict] = []
    for part in parts:
        left = deadline_s - (time.monotonic() - t0)
        argv = command(part, fill)
        rec: dict = {"part": part.name, "issue": part.issue, "estimate_s": part.estimate_s, "command": shlex.join(argv)}
        if part.estimate_s > left:
            rec["status"] = "skipped"
            rec["reason"] = f"estimate {part.estimate_s:.0f} s > {left:.0f} s left"
            logger.info("skipping %s: %s", part.name, rec["reason"])
        else:
            logger.info("running %s (issue %s): %s", part.name, part.issue, rec["command"])
            start = time.monotonic()
            # time-boxed to twice its estimate (at least a minute more), so one hang cannot eat the others' time
            rc = _run_one(argv, work / f"{part.name}.log", env, min(left, max(2 * part.estimate_s, part.estimate_s + 60)))
            rec["seconds"] = round(time.monotonic() - start, 1)
            rec["rc"] = rc
            rec["status"] = "timeout" if rc is None else ("ok" if rc == 0 else "failed")
            logger.info("%s: %s in %.0f s", part.name, rec["status"], rec["seconds"])
        records.append(rec)
        _pack(work, out, records)
    return records


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


PREFLIGHT = """
import torch, triton
assert torch.cuda.is_available(), "CUDA is not available to torch " + torch.__version__
from monai_gmr import GMRConv
from monai_gmr.functional import triton_conv as tc
calls = []
real = tc.triton_forward
tc.triton_forward = lambda *a, **k: calls.append(1) or real(*a, **k)
m = GMRConv(2, 4, 4, 5, impl="triton").cuda()
x = torch.randn(1, 4, 16, 16, device="cuda", requires_grad=True)
m(x).sum().backward()
torch.cuda.synchronize()
assert calls, "GMRConv(impl='triton') did not launch the Triton kernels"
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), triton {triton.__version__}, "
      f"{torch.cuda.get_device_name(0)}: Triton forward + backward ok")
"""


def _preflight(env: dict[str, str], timeout: float = 180.0) -> tuple[bool, str]:
    """CUDA visible, Triton importable, one GMRConv(impl="triton") forward + backward through the Triton kernels
    (strict: no fallback); run before any part, so a machine without them fails loudly instead of reporting skipped
    tests as passed. Returns ``(ok, output)``."""
    try:
        done = subprocess.run([sys.executable, "-c", PREFLIGHT], env=env, cwd=str(ROOT), capture_output=True, text=True,
                              timeout=timeout)  # fmt: skip
    except subprocess.TimeoutExpired:
        return False, f"pre-flight did not finish in {timeout:.0f} s"
    return done.returncode == 0, done.stdout + done.stderr


def run(args: argparse.Namespace) -> int:
    names = [n.strip() for n in args.parts.split(",") if n.strip()]
    unknown = [n for n in names if n not in PARTS]
    if unknown:
        raise SystemExit(f"--parts: unknown part(s) {unknown}; choose from {list(PARTS)}")
    out = Path(args.out or os.environ.get("OUT") or "device_out").resolve()
    work = Path(args.work).resolve()
    if ROOT == work or ROOT in work.parents:
        raise SystemExit(f"--work {work} is inside the repository (the benchmarks refuse that); choose a folder outside {ROOT}")
    env = dict(os.environ)
    paths = [str(ROOT)]
    if not args.no_install and not args.dry_run:
        site = Path(args.site)
        try:
            _install_wheels(site)
        except (subprocess.CalledProcessError, OSError) as e:
            _pack(work if work.is_dir() else _mkdir(work), out, [{"part": "install", "issue": "-", "status": "failed",
                                                                 "reason": f"{type(e).__name__}: {e}"}])  # fmt: skip
            logger.error("installing the wheels failed: %s", e)
            return 2
        paths.insert(0, str(site))
    env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONUNBUFFERED"] = "1"
    # GPU tests fail (not skip) without CUDA/Triton, and a Triton failure raises instead of falling back to a dense
    # result that the tests and benchmarks would count as Triton
    env["MONAI_GMR_REQUIRE_GPU"] = "1"
    env["MONAI_GMR_TRITON_STRICT"] = "1"
    try:
        import xdist  # noqa: F401

        xdist_arg = "-n8"
    except ImportError:
        xdist_arg = ""
    fill = {"py": sys.executable, "work": str(work), "data": str(DATA_DIR), "epochs": str(args.nuclei_epochs), "xdist": xdist_arg}
    if args.dry_run:
        for n in names:
            print(f"{n} (issue {PARTS[n].issue}, ~{PARTS[n].estimate_s:.0f} s): {shlex.join(command(PARTS[n], fill))}")
        return 0
    if not args.no_preflight:
        ok, report = _preflight(env)
        (_mkdir(work) / "preflight.log").write_text(report)
        if not ok:
            _pack(work, out, [{"part": "preflight", "issue": "-", "status": "failed", "reason": report[-2000:]}])
            logger.error("pre-flight failed, no part run:\n%s", report)
            return 2
        logger.info("pre-flight: %s", report.strip().splitlines()[-1] if report.strip() else "")
    records = run_parts([PARTS[n] for n in names], work, out, args.deadline_s, env, fill)
    print((out / "device_summary.md").read_text())
    return 0 if all(r["status"] in ("ok", "skipped") for r in records) else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    pp = sub.add_parser("prepare", help="here: download wheels, copy data, print the device call")
    pp.add_argument("--skip-download", action="store_true", help="only check the wheels already in .whl/")
    pp.add_argument("--parts", default=None, help="parts to name in the printed command")
    pr = sub.add_parser("run", help="on the device: install wheels, run parts under a deadline, pack results")
    pr.add_argument("--parts", default="gpu_tests,bench_nets,wsi_throughput,triton_unet",
                    help=f"comma-separated, in order, from {','.join(PARTS)}")
    pr.add_argument("--deadline-s", type=float, default=540.0, help="seconds for all parts together")
    pr.add_argument("--out", default=None, help="where the packed results go (default: $OUT)")
    pr.add_argument("--work", default="/tmp/device_work", help="outputs and logs of the parts (outside the repository)")
    pr.add_argument("--site", default="/tmp/site", help="where the wheels are installed")
    pr.add_argument("--nuclei-epochs", type=int, default=100, help="epochs of the nuclei part (the benchmark default is 300)")
    pr.add_argument("--no-install", action="store_true", help="use the installed packages (no wheels)")
    pr.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    pr.add_argument("--no-preflight", action="store_true",
                    help="skip the CUDA/Triton pre-flight (only for trying the script without a GPU)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return prepare(args) if args.cmd == "prepare" else run(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
