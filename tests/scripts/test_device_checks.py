"""scripts/device_checks.py: part commands, the deadline runner, result packing and the wheel requirement check."""

from __future__ import annotations

import json
import re
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import device_checks as dc  # noqa: E402

FILL = {"py": sys.executable, "work": "/tmp/w", "data": "/tmp/d", "epochs": "7", "xdist": ""}


def test_commands_fill_placeholders_and_drop_empty_ones():
    argv = dc.command(dc.PARTS["gpu_tests"], FILL)
    assert argv[0] == sys.executable and "{xdist}" not in argv and "" not in argv
    assert dc.command(dc.PARTS["gpu_tests"], {**FILL, "xdist": "-n8"})[-2] == "-n8"
    nuclei = dc.command(dc.PARTS["nuclei"], FILL)
    assert nuclei[nuclei.index("--epochs") + 1] == "7" and nuclei[nuclei.index("--data") + 1] == "/tmp/d/cpm15_nuclei_he"
    tri = dc.command(dc.PARTS["triton_unet"], FILL)
    assert tri[tri.index("--shapes3d") + 1] == ""  # a literal empty value (skip 3D) is kept


PYTEST_PARTS = [n for n in dc.PARTS if dc.PARTS[n].argv[1:3] == ("-m", "pytest")]


@pytest.mark.parametrize("name", PYTEST_PARTS)
def test_pytest_parts_name_test_files_with_gpu_tests(name):
    """A pytest part runs ``-m gpu`` over test files that exist and hold CUDA tests (not an empty selection)."""
    argv = dc.command(dc.PARTS[name], FILL)
    assert argv[argv.index("-m", 2) + 1] == "gpu"
    files = [ROOT / a for a in argv if a.startswith("tests/")]
    assert files and all(f.is_file() and "pytest.mark.gpu" in f.read_text() for f in files), files


@pytest.mark.parametrize("name", [n for n in dc.PARTS if n not in PYTEST_PARTS])
def test_part_scripts_and_options_exist(name):
    """Every part names a script of the repository and only options that script defines (no silent rot)."""
    argv = dc.command(dc.PARTS[name], FILL)
    script = ROOT / argv[1]
    assert script.is_file(), script
    src = script.read_text()
    for opt in (a for a in argv[2:] if a.startswith("--")):
        assert re.search(rf"""add_argument\(\s*["']{re.escape(opt)}["']""", src), f"{script.name} has no option {opt}"


def _part(name, code, estimate=1.0):
    return dc.Part(name, "0", estimate, ("{py}", "-c", code), name)


def test_run_parts_statuses_deadline_and_packing(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    parts = [
        _part("ok", "import pathlib; pathlib.Path('{work}/ok.txt').write_text('done'); "
                    "pathlib.Path('{work}/model.pt').write_bytes(b'0' * 100); print('hello')"),
        _part("fails", "import sys; sys.exit(3)"),
        _part("too_long", "pass", estimate=1e6),
        # the benchmarks start subprocesses: at the deadline the whole process group must go, grandchildren too
        _part("hangs", "import pathlib, subprocess; p = subprocess.Popen(['sleep', '60']); "
                       "pathlib.Path('{work}/pid').write_text(str(p.pid)); p.wait()"),
    ]
    t0 = time.monotonic()
    fill = {**FILL, "work": str(work)}
    recs = dc.run_parts(parts, work, out, deadline_s=6.0, env=dict(__import__("os").environ), fill=fill)
    assert time.monotonic() - t0 < 30
    status = {r["part"]: r["status"] for r in recs}
    assert status == {"ok": "ok", "fails": "failed", "too_long": "skipped", "hangs": "timeout"}
    assert [r.get("rc") for r in recs] == [0, 3, None, None]
    summary = json.loads((out / "device_summary.json").read_text())
    assert [r["part"] for r in summary] == ["ok", "fails", "too_long", "hangs"]
    assert "| fails | 0 | failed | 3 |" in (out / "device_summary.md").read_text()
    with tarfile.open(out / "device_results.tar.gz") as tar:
        names = set(tar.getnames())
        assert {"device_results/ok.txt", "device_results/ok.log", "device_results/hangs.log"} <= names
        assert "device_results/model.pt" not in names  # bulky outputs stay out of the one tarball
        assert tar.extractfile("device_results/ok.log").read().decode().strip() == "hello"
        assert b"stopped at the deadline" in tar.extractfile("device_results/hangs.log").read()
    assert not list(out.glob("*.tmp"))
    stat = Path(f"/proc/{(work / 'pid').read_text()}/stat")
    time.sleep(0.5)
    assert not stat.exists() or stat.read_text().split(") ")[1][0] == "Z", "the grandchild survived the deadline"


def test_run_rejects_unknown_parts_and_work_inside_repo(tmp_path):
    with pytest.raises(SystemExit, match="unknown part"):
        dc.main(["run", "--parts", "gpu_tests,nope", "--no-install", "--dry-run"])
    with pytest.raises(SystemExit, match="inside the repository"):
        dc.main(["run", "--parts", "gpu_tests", "--no-install", "--work", str(ROOT / "w"), "--out", str(tmp_path)])


def test_run_without_a_usable_gpu_fails_loudly_before_any_part(tmp_path):
    """The pre-flight (CUDA, Triton, one strict Triton forward + backward) fails here, so nothing runs and the
    summary says why, instead of 'gpu_tests ok' with every CUDA test skipped."""
    work, out = tmp_path / "work", tmp_path / "out"
    assert dc.main(["run", "--parts", "gpu_tests", "--no-install", "--work", str(work), "--out", str(out)]) == 2
    summary = json.loads((out / "device_summary.json").read_text())
    assert [r["part"] for r in summary] == ["preflight"] and summary[0]["status"] == "failed"
    assert not (work / "gpu_tests.log").exists()


def test_gpu_tests_fail_instead_of_skipping_when_a_gpu_is_required(tmp_path):
    """With MONAI_GMR_REQUIRE_GPU=1 (set by the run) a CUDA test on a machine without CUDA fails, not skips."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "MONAI_GMR_REQUIRE_GPU": "1"}
    test = "tests/functional/test_triton_conv.py::test_cuda_low_level_writes_every_output"
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode != 0 and "1 failed" in done.stdout, done.stdout[-2000:]


def test_dry_run_lists_every_part(capsys):
    assert dc.main(["run", "--parts", ",".join(dc.PARTS), "--no-install", "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split(" ")[0] for ln in lines] == list(dc.PARTS)


def _wheel(path: Path, name: str, requires: list[str]) -> Path:
    w = path / f"{name}-1.0-py3-none-any.whl"
    meta = "Metadata-Version: 2.1\nName: {}\nVersion: 1.0\n{}\n".format(name, "".join(f"Requires-Dist: {r}\n" for r in requires))
    with zipfile.ZipFile(w, "w") as z:
        z.writestr(f"{name}-1.0.dist-info/METADATA", meta)
    return w


def test_missing_requirements_uses_markers_the_set_and_the_image(tmp_path):
    a = _wheel(tmp_path, "alpha", ["numpy>=1.20", "beta_pkg", "gamma", "old; python_version < '3.8'",
                                   "win; sys_platform == 'win32'", "extra-only; extra == 'test'"])  # fmt: skip
    b = _wheel(tmp_path, "beta_pkg", [])
    assert dc.missing_requirements([a, b]) == {a.name: ["gamma"]}
    assert dc.missing_requirements([a, b], available=dc.DEVICE_PACKAGES | {"gamma"}) == {}


def test_a_part_is_skipped_by_the_time_left_not_by_the_whole_deadline(tmp_path):
    """After a 3.5 s part, at most 2.5 s of a 6 s deadline are left: a part estimated at 5 s (under the deadline,
    over what is left) is skipped, and a shorter one after it still runs."""
    parts = [_part("slow", "import time; time.sleep(3.5)"), _part("big", "pass", estimate=5.0),
             _part("small", "pass", estimate=0.1)]  # fmt: skip
    fill = {**FILL, "work": str(tmp_path / "work")}
    recs = dc.run_parts(parts, tmp_path / "work", tmp_path / "out", deadline_s=6.0, env=dict(__import__("os").environ), fill=fill)
    assert {r["part"]: r["status"] for r in recs} == {"slow": "ok", "big": "skipped", "small": "ok"}
    assert re.fullmatch(r"estimate 5 s > [0-2] s left", recs[1]["reason"]), recs[1]["reason"]
