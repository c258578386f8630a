"""What the commands share: the one-line wording of an expected error, the run and results
folders they write, the loop over MVTec AD categories, the --category / --normal-class choice
of data, and printed notes."""

from __future__ import annotations

import contextlib
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from ..config import Config
from ..data import mvtec_categories
from ..errors import DataError, FunetganError, RunFolderError
from ..files import CHECKPOINT_FILE, LOG_FILE, MODEL_FILE, WriteError
from ..training.tracking import TENSORBOARD_FOLDER

CONFIG_FILE = "config.yaml"
RUN_OUTPUTS = (MODEL_FILE, CHECKPOINT_FILE, CONFIG_FILE, LOG_FILE, "samples", TENSORBOARD_FOLDER)
RESULT_OUTPUTS = (
    "metrics.json",
    "predictions.csv",
    "scores.csv",
    "report.html",
    "masks",
    "overlays",
    "plots",
    "volumes.csv",
    "volumes",
    TENSORBOARD_FOLDER,
)


def refuse_inputs_as_outputs(out: str | Path, inputs: Iterable[str | Path | None]) -> None:
    """Refuse an output folder (or file) that is one of the command's inputs, holds one or lies
    inside one, whatever --overwrite says: --overwrite replaces results, never inputs. Paths
    are compared with symbolic links resolved; None stands for an input not given."""
    target = Path(out).resolve()
    for given in inputs:
        if given is None:
            continue
        source = Path(given).resolve()
        relation = (
            "is"
            if target == source
            else "holds"
            if source.is_relative_to(target)
            else "lies inside"
            if target.is_relative_to(source)
            else None
        )
        if relation:
            raise RunFolderError(
                f"{out} {relation} the input {given}: write the outputs somewhere else "
                f"(inputs are never overwritten, --overwrite or not)"
            )


def claim_folder(folder: Path, outputs: tuple[str, ...], overwrite: bool) -> None:
    """Refuse to write over earlier results unless --overwrite; with it, remove them first."""
    existing = [folder / name for name in outputs if (folder / name).exists()]
    if existing and not overwrite:
        resume = " or --resume to continue" if CHECKPOINT_FILE in outputs else ""
        raise RunFolderError(
            f"{folder} already holds results ({existing[0].name}); use --overwrite to replace them{resume}"
        )
    try:
        for path in existing:
            remove(path)
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise WriteError(Path(err.filename or folder), err) from None


def remove(path: Path) -> None:
    shutil.rmtree(path) if path.is_dir() else path.unlink()


@contextlib.contextmanager
def removed_on_failure(folder: Path, outputs: tuple[str, ...], started: Callable[[], bool]) -> Iterator[None]:
    """When the block fails before `started()` (e.g. a tracker that cannot start, a bad data
    set), remove the `outputs` in `folder` it wrote, and only those: a failed start leaves
    nothing that makes the same command say "already holds results" next time."""
    before = {name for name in outputs if (folder / name).exists()}
    try:
        yield
    except BaseException:
        if not started():
            for name in outputs:
                if name not in before and (folder / name).exists():
                    remove(folder / name)
        raise


def each_category(data: str, run: Callable[[str], None]) -> int:
    """`run(name)` for every MVTec AD category under `data`. A category that fails with an
    expected error does not stop the others: the failed ones are listed at the end, one line
    each with the reason, with exit code 2. A bug stops the loop (the CLI shows its traceback)."""
    names = categories(data)
    failed = []
    for name in names:
        print(f"== {name}")
        try:
            run(name)
        except FunetganError as err:
            failed.append(f"{name}: {err}")
            print(f"== {name}: failed (reported at the end)")
    if failed:
        print(f"funetgan: error: {len(failed)} of {len(names)} categories failed:", file=sys.stderr)
    for line in failed:
        print(f"funetgan: error: {line}", file=sys.stderr)
    return 2 if failed else 0


def categories(data: str) -> list[str]:
    found = mvtec_categories(data)
    if not found:
        raise DataError(f"{data}: no MVTec AD categories (folders with train/good) found")
    return found


def choose_data(config: Config, category: str | None, normal_class: int | None) -> None:
    """--category and --normal-class on `config.data` (None: the settings' own choice)."""
    if category is not None:
        config.data.category = category
    if normal_class is not None:
        config.data.normal_class = normal_class


def print_notes(notes: list[str]) -> None:
    for note in notes:
        print(f"note: {note}")
