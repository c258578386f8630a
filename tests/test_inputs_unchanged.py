"""No command ever modifies its inputs: every file of the data and of the trained run is hashed
before and after train, test, predict, calibrate, export and mood; an output folder that is,
holds or lies inside an input is refused, --overwrite or not (commands/common.py)."""

import hashlib
import os
from pathlib import Path

import pytest

from funetgan.cli import main

pytest.importorskip("nibabel")


def hashes(*folders: Path) -> dict[str, str]:
    """sha256 of every file under `folders` (lock files aside: they are no input), by path."""
    return {
        str(path): hashlib.sha256(path.read_bytes()).hexdigest()
        for folder in folders
        for path in sorted(Path(folder).rglob("*"))
        if path.is_file() and path.name != ".funetgan.lock"
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mood_region, tiny_args):
    """A MOOD region (volumes in 0..1: every command reads it) and a run trained on it; the
    data's files are unchanged by training."""
    data = mood_region(tmp_path_factory.mktemp("data"), train=3, toy=2)
    before = hashes(data)
    run = tmp_path_factory.mktemp("run")
    assert main(["train", "--data", str(data), "--out", str(run), *tiny_args]) == 0
    assert hashes(data) == before
    return data, run


def test_every_command_leaves_its_inputs_as_they_were(trained, tmp_path):
    data, run = trained
    before = hashes(data, run)
    toy = str(data / "toy")
    assert main(["test", "--run", str(run), "--data", str(data), "--out", str(tmp_path / "test")]) == 0
    assert main(["predict", "--run", str(run), "--out", str(tmp_path / "predict"), toy]) == 0
    assert main(["mood", "--run", str(run), toy, str(tmp_path / "mood")]) == 0
    if all(map(_importable, ("onnx", "onnxruntime"))):
        assert main(["export", "--run", str(run), "--data", str(data), "--out", str(tmp_path / "model.onnx")]) == 0
        assert main(["mood", "--model", str(tmp_path / "model.onnx"), toy, str(tmp_path / "mood-onnx")]) == 0
    assert hashes(data, run) == before
    assert main(["calibrate", "--run", str(run), "--data", str(data), "--device", "cpu"]) == 0  # rewrites the run
    assert hashes(data) == {key: value for key, value in before.items() if key.startswith(str(data))}


def _importable(name: str) -> bool:
    try:
        __import__(name)
        return True
    except ImportError:
        return False


# (command line, the output named in the error, the input it collides with); DATA and RUN are
# replaced by the trained fixture's folders.
REFUSED = [
    (["mood", "--run", "RUN", "DATA/toy", "DATA/toy", "--overwrite"], "DATA/toy", "is", "DATA/toy"),
    (["mood", "--run", "RUN", "DATA/toy", "DATA/toy/out"], "DATA/toy/out", "lies inside", "DATA/toy"),
    (["mood", "--run", "RUN", "DATA/toy", "RUN/out"], "RUN/out", "lies inside", "RUN"),
    (["test", "--run", "RUN", "--data", "DATA", "--out", "DATA", "--overwrite"], "DATA", "is", "DATA"),
    (["test", "--run", "RUN", "--data", "DATA/toy", "--out", "DATA", "--overwrite"], "DATA", "holds", "DATA/toy"),
    (
        ["predict", "--run", "RUN", "--out", "DATA/toy", "--overwrite", "DATA/toy/00000.nii.gz"],
        "DATA/toy",
        "holds",
        "DATA/toy/00000.nii.gz",
    ),
    (["predict", "--run", "RUN", "--out", "RUN", "--overwrite", "DATA/toy"], "RUN", "is", "RUN"),
    (["train", "--data", "DATA", "--out", "DATA/run", "--overwrite", "TINY"], "DATA/run", "lies inside", "DATA"),
    (["calibrate", "--run", "DATA/brain_train", "--data", "DATA"], "DATA/brain_train", "lies inside", "DATA"),
    (
        ["export", "--run", "RUN", "--out", "RUN/model.safetensors", "--overwrite"],
        "RUN/model.safetensors",
        "is",
        "RUN/model.safetensors",
    ),
    (
        ["export", "--run", "RUN", "--data", "DATA", "--out", "DATA/model.onnx"],
        "DATA/model.onnx",
        "lies inside",
        "DATA",
    ),
]


@pytest.mark.parametrize(
    "argv, out, relation, source", REFUSED, ids=[f"{r[0][0]} {r[2]} {i}" for i, r in enumerate(REFUSED)]
)
def test_an_output_that_is_holds_or_lies_in_an_input_is_refused(
    trained, capsys, tiny_args, argv, out, relation, source
):
    data, run = trained
    before = hashes(data, run)

    def real(text: str) -> str:
        return text.replace("DATA", str(data)).replace("RUN", str(run))

    argv = [arg for item in argv for arg in (tiny_args if item == "TINY" else [item])]
    assert main([real(item) for item in argv]) == 2
    err = capsys.readouterr().err
    assert (
        err == f"funetgan: error: {real(out)} {relation} the input {real(source)}: write the outputs somewhere "
        f"else (inputs are never overwritten, --overwrite or not)\n"
    )
    assert hashes(data, run) == before


def test_a_link_to_an_input_is_that_input(trained, tmp_path, capsys):
    data, run = trained
    before = hashes(data, run)
    link = tmp_path / "link"
    os.symlink(data / "toy", link)
    assert main(["mood", "--run", str(run), str(data / "toy"), str(link), "--overwrite"]) == 2
    assert f"{link} is the input {data / 'toy'}" in capsys.readouterr().err
    assert hashes(data, run) == before


def test_demo_refuses_an_output_folder_that_holds_its_settings_file(tmp_path, capsys):
    settings = tmp_path / "settings.yaml"
    settings.write_text("seed: 1\n")
    assert main(["demo", "--out", str(tmp_path), "--config", str(settings), "--overwrite"]) == 2
    assert capsys.readouterr().err.startswith(f"funetgan: error: {tmp_path} holds the input {settings}: ")
    assert settings.read_text() == "seed: 1\n" and sorted(p.name for p in tmp_path.iterdir()) == ["settings.yaml"]
