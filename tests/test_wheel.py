"""The package as users get it. `python -m build` makes an sdist and a wheel that pass `twine
check` and hold every file of src/funetgan, data files included; the version has one source.
Slow (run by .ci/run after the default suite): the wheel installs into empty virtual
environments, in full with the onnx and medical extras, and by docs/deployment.md's torch-free
recipe, and its command runs there (train, test and export; predict with the ONNX file
where PyTorch is not installed)."""

from __future__ import annotations

import email
import os
import re
import shlex
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "funetgan"
DEPLOYMENT = ROOT / "docs" / "deployment.md"
tomllib = pytest.importorskip("tomllib")  # Python 3.11+


def package_files() -> set[str]:
    """Every file of src/funetgan (code and data) as the wheel names it."""
    return {
        f"funetgan/{path.relative_to(PACKAGE).as_posix()}"
        for path in PACKAGE.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


def source_version() -> str:
    """funetgan.__version__, read as setuptools reads it (the text, not an import)."""
    (version,) = re.findall(r'^__version__ = "(.+)"$', (PACKAGE / "__init__.py").read_text(), re.MULTILINE)
    return version


def run(command: list[str], cwd: Path | None = None, env: dict | None = None, timeout: int = 600) -> str:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"{shlex.join(command)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="session")
def dist(tmp_path_factory) -> Path:
    """The sdist and the wheel built from it, once per test session."""
    pytest.importorskip("build")
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)])
    return out


def built(dist: Path, pattern: str) -> Path:
    (path,) = dist.glob(pattern)
    return path


def test_the_version_has_one_source():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "funetgan.__version__"}


def test_sdist_and_wheel_pass_twine_check(dist):
    pytest.importorskip("twine")
    out = run([sys.executable, "-m", "twine", "check", "--strict", *map(str, sorted(dist.iterdir()))])
    assert out.count("PASSED") == 2


def test_the_wheel_and_the_sdist_hold_every_package_file(dist):
    files = package_files()
    assert any(not name.endswith(".py") for name in files)  # data files too (py.typed at least)
    with zipfile.ZipFile(built(dist, "*.whl")) as wheel:
        assert files - set(wheel.namelist()) == set()
        metadata = email.message_from_bytes(wheel.read(f"funetgan-{source_version()}.dist-info/METADATA"))
    assert metadata["Version"] == source_version()
    assert f"dist/{built(dist, '*.whl').name}[onnx,medical]" in (ROOT / "README.md").read_text()  # its Install section
    with tarfile.open(built(dist, "*.tar.gz")) as sdist:
        prefix = f"funetgan-{source_version()}/src/"
        assert files - {name.removeprefix(prefix) for name in sdist.getnames()} == set()


# ---- docs/deployment.md's torch-free install ---------------------------------------------------
def torch_free_recipe() -> list[list[str]]:
    """The `pip install` lines of the deployment page's block that installs with --no-deps."""
    blocks = re.findall(r"```bash\n(.*?)```", DEPLOYMENT.read_text(), re.DOTALL)
    (block,) = [block for block in blocks if "--no-deps" in block]
    lines = [shlex.split(line.partition("#")[0]) for line in block.splitlines()]
    commands = [line for line in lines if line]
    assert all(command[:2] == ["pip", "install"] for command in commands), block
    return commands


def test_the_torch_free_recipe_installs_every_dependency_but_pytorch():
    """What `funetgan` needs less PyTorch, plus onnxruntime: a dependency added to pyproject.toml
    and not to the recipe fails here."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {re.match(r"[A-Za-z0-9_.-]+", requirement)[0] for requirement in project["dependencies"]}
    runtime = {re.match(r"[A-Za-z0-9_.-]+", r)[0] for r in project["optional-dependencies"]["onnx"]} - {"onnx"}
    dependencies, package = torch_free_recipe()
    assert set(dependencies[2:]) == (names - {"torch"}) | runtime
    assert package == ["pip", "install", "--no-deps", "funetgan"]


# ---- installed into empty virtual environments (slow) -----------------------------------------
def make_venv(folder: Path) -> tuple[Path, dict]:
    """An empty virtual environment in `folder` and the environment variables to run in it:
    nothing of this checkout or of the test's own environment on the path."""
    run([sys.executable, "-m", "venv", str(folder)])
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(PATH=f"{folder / 'bin'}{os.pathsep}{env.get('PATH', '')}", OMP_NUM_THREADS="1")
    return folder / "bin", env


def funetgan(bin_dir: Path, env: dict, cwd: Path, *args: str) -> str:
    return run([str(bin_dir / "funetgan"), *args], cwd=cwd, env=env)


@pytest.fixture(scope="session")
def installed(dist, tmp_path_factory) -> tuple[Path, dict]:
    """The wheel with its onnx and medical extras in an empty environment; PyTorch pinned to the
    build these tests run on (pip would otherwise take the newest, a GPU build)."""
    torch = pytest.importorskip("torch")
    folder = tmp_path_factory.mktemp("venv-full")
    bin_dir, env = make_venv(folder / "venv")
    (folder / "constraints.txt").write_text(f"torch=={torch.__version__}\n")
    run(
        [
            str(bin_dir / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "-c",
            str(folder / "constraints.txt"),
            f"{built(dist, '*.whl')}[onnx,medical]",
        ],
        cwd=folder,
        env=env,
        timeout=1200,
    )
    return bin_dir, env


@pytest.fixture(scope="session")
def exported(installed, tmp_path_factory, tiny_args) -> tuple[Path, Path]:
    """A tiny run trained, tested and exported by the installed command: the data, the ONNX file."""
    from funetgan.data.demo import make_texture_dataset

    bin_dir, env = installed
    work = tmp_path_factory.mktemp("installed-run")
    data = make_texture_dataset(work / "brick", crop=64, n_train=12, n_test_good=3, n_per_defect=1)
    funetgan(bin_dir, env, work, "train", "--data", str(data), "--out", "run", *tiny_args)
    funetgan(bin_dir, env, work, "test", "--run", "run", "--data", str(data), "--out", "results")
    funetgan(bin_dir, env, work, "export", "--run", "run", "--out", "model.onnx", "--data", str(data))
    return data, work / "model.onnx"


@pytest.mark.slow
def test_the_installed_wheel_trains_tests_and_exports(installed, exported):
    bin_dir, env = installed
    where = run([str(bin_dir / "python"), "-c", "import funetgan; print(funetgan.__file__)"], cwd=bin_dir, env=env)
    assert Path(where.strip()).is_relative_to(bin_dir.parent)  # the installed copy, not this checkout
    assert funetgan(bin_dir, env, bin_dir, "--version").strip() == f"funetgan {source_version()}"
    assert "predict" in funetgan(bin_dir, env, bin_dir, "--help")
    results = exported[1].parent / "results"
    assert (results / "metrics.json").exists() and (results / "report.html").exists()
    assert exported[1].stat().st_size > 0


@pytest.mark.slow
def test_predict_with_the_onnx_file_where_pytorch_is_not_installed(dist, exported, tmp_path):
    """docs/deployment.md's recipe, line by line, with the wheel for the package's name."""
    data, model = exported
    bin_dir, env = make_venv(tmp_path / "venv")
    for command in torch_free_recipe():
        arguments = [str(built(dist, "*.whl")) if word == "funetgan" else word for word in command[2:]]
        run([str(bin_dir / "python"), "-m", "pip", "install", "-q", *arguments], cwd=tmp_path, env=env, timeout=1200)
    missing = subprocess.run(
        [str(bin_dir / "python"), "-c", "import torch"], env=env, capture_output=True, text=True, check=False
    )
    assert "No module named 'torch'" in missing.stderr
    assert funetgan(bin_dir, env, tmp_path, "--version").strip() == f"funetgan {source_version()}"
    train = subprocess.run(
        [str(bin_dir / "funetgan"), "train", "--data", str(data), "--out", "run"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert (train.returncode, train.stderr.splitlines()) == (
        2,
        [
            (
                "funetgan: error: train needs PyTorch, which is not installed here: pip install torch "
                "(without it, predict and test score an exported model: --model)"
            )
        ],
    )
    out = funetgan(bin_dir, env, tmp_path, "predict", "--model", str(model), "--out", "new", str(data / "test"))
    assert "image(s) scored" in out
    rows = (tmp_path / "new" / "predictions.csv").read_text().splitlines()
    assert len(rows) == 1 + len(list((data / "test").rglob("*.png")))  # a header, then one row per image
