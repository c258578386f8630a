"""Fuzzed inputs: a seeded corpus of mutated and truncated PNG, TIFF, JPEG, DICOM, NIfTI and IDX
files, written by the test itself. Every case gives a one-line error naming the file, or a
listed skip; never a traceback, a hang or unbounded memory. The default run checks a few
mutants per format; `-m slow` checks many."""
import io
import resource
import signal
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from funetgan.cli import main
from funetgan.config import DataConfig
from funetgan.data import DataError, load_dataset, load_unlabelled

MEMORY_GROWTH_LIMIT_MB = 1024  # growth of the test process's peak resident memory over a corpus
SECONDS_PER_CASE = 20


def _picture(rng, mode="L", size=24) -> Image.Image:
    channels = {"L": 1, "RGB": 3}[mode]
    return Image.fromarray((rng.random((size, size, channels)) * 255).astype(np.uint8).squeeze())


def _encoded(picture: Image.Image, **save) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, **save)
    return buffer.getvalue()


def image_seeds(rng) -> dict[str, bytes]:
    sixteen = Image.fromarray((rng.random((24, 24)) * 65535).astype(np.uint16))
    return {"png": _encoded(_picture(rng), format="PNG"),
            "rgb.png": _encoded(_picture(rng, "RGB"), format="PNG"),
            "tif": _encoded(sixteen, format="TIFF"),
            "jpg": _encoded(_picture(rng, "RGB"), format="JPEG")}


@pytest.fixture
def medical_writers(request):
    """(save_nifti, write_dicom), or None where nibabel or pydicom is missing."""
    try:
        return request.getfixturevalue("save_nifti"), request.getfixturevalue("write_dicom")
    except pytest.skip.Exception:
        return None


def medical_seeds(rng, folder, writers) -> dict[str, bytes]:
    """A DICOM slice and a NIfTI volume, when pydicom and nibabel are installed (`writers`)."""
    seeds = {}
    if writers is None:
        return seeds
    save_nifti, write_dicom = writers
    pixels = (rng.random((16, 16)) * 1000).astype(np.int16)
    seeds["dcm"] = write_dicom(folder / "seed.dcm", pixels).read_bytes()
    save_nifti(folder / "seed.nii", (rng.random((12, 12, 3)) * 1000).astype(np.int16))
    seeds["nii"] = (folder / "seed.nii").read_bytes()
    return seeds


def idx_seed(rng) -> bytes:
    images = (rng.random((6, 28, 28)) * 255).astype(np.uint8)
    return struct.pack(">BBBBIII", 0, 0, 8, 3, *images.shape) + images.tobytes()


def mutants(data: bytes, rng, count: int) -> list[bytes]:
    """Truncations, random byte changes, and header fields overwritten with extreme values
    (huge sizes, negative or zero dimensions): `count` of them."""
    made = []
    for i in range(count):
        kind = i % 3
        if kind == 0:  # every other one inside the header
            made.append(data[:int(rng.integers(0, len(data) if i % 2 else min(len(data), 64)))])
        elif kind == 1:
            changed = bytearray(data)
            for position in rng.integers(0, len(data), int(rng.integers(1, 12))):
                changed[position] = int(rng.integers(0, 256))
            made.append(bytes(changed))
        else:
            changed = bytearray(data)
            start = int(rng.integers(0, min(len(data) - 4, 400)))
            changed[start:start + 4] = rng.choice([b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\0\0\0\0",
                                                   b"\x80\0\0\0"])
            made.append(bytes(changed))
    return made


@pytest.fixture
def watchdog():
    """`watchdog(seconds)`: fail (rather than hang) when a case takes longer."""
    def expire(signum, frame):
        raise TimeoutError("a fuzzed case took too long (a hang?)")

    previous = signal.signal(signal.SIGALRM, expire)
    yield lambda seconds: signal.alarm(seconds)
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _check_case(read, name: str, problems: list[str], watchdog) -> None:
    """`read()` must succeed or raise a one-line DataError naming `name`."""
    watchdog(SECONDS_PER_CASE)
    try:
        read()
    except DataError as err:
        if "\n" in str(err) or name not in str(err):
            problems.append(f"{name}: error not one line naming the file: {err!r}")
    except Exception as err:  # anything else would be a traceback on the command line
        problems.append(f"{name}: {type(err).__name__}: {err}")
    finally:
        watchdog(0)


def _fuzz_corpus(tmp_path, count: int, watchdog, medical_writers) -> list[str]:
    rng = np.random.default_rng(13)
    problems = []
    before = _peak_mb()
    seeds = {**image_seeds(rng), **medical_seeds(rng, tmp_path, medical_writers)}
    for suffix, data in seeds.items():
        for i, mutant in enumerate(mutants(data, rng, count)):
            path = tmp_path / f"fuzz_{i:03d}.{suffix}"
            path.write_bytes(mutant)
            for policy in ("error", "skip"):
                _check_case(lambda: load_unlabelled([str(path)], 32, 1,  # noqa: B023 (called at once)
                                                    DataConfig(on_bad_file=policy)),  # noqa: B023
                            path.name, problems, watchdog)
    seed = idx_seed(rng)
    header_cuts = [seed[:n] for n in range(0, 20, 3)]  # 4..15 bytes: the dimensions cut short
    for i, mutant in enumerate(header_cuts + mutants(seed, rng, count)):
        root = tmp_path / f"idx_{i:03d}"
        root.mkdir()
        (root / "train-images-idx3-ubyte").write_bytes(mutant)
        (root / "train-labels-idx1-ubyte").write_bytes(struct.pack(">BBBBI", 0, 0, 8, 1, 6) + bytes(6))
        _check_case(lambda: load_dataset(root, 32, 1, DataConfig(normal_class=0)),  # noqa: B023 (called at once)
                    "train-images-idx3-ubyte", problems, watchdog)
    growth = _peak_mb() - before
    if growth > MEMORY_GROWTH_LIMIT_MB:
        problems.append(f"peak memory grew by {growth:.0f} MB")
    return problems


def test_fuzzed_files_give_one_line_errors(tmp_path, watchdog, medical_writers):
    assert _fuzz_corpus(tmp_path, 6, watchdog, medical_writers) == []


@pytest.mark.slow
def test_a_large_fuzzed_corpus_gives_one_line_errors(tmp_path, watchdog, medical_writers):
    assert _fuzz_corpus(tmp_path, 120, watchdog, medical_writers) == []


def test_fuzzed_files_through_train_test_and_predict(tmp_path, capsys, tiny_args):
    """The corpus beside good images in train/ and test/: with data.on_bad_file=error each
    command stops in one line naming bad files; with skip each lists them and finishes."""
    rng = np.random.default_rng(7)
    data, broken = tmp_path / "data", tmp_path / "broken"
    for split in ("train", "test/good", "test/bad"):
        (data / split).mkdir(parents=True)
    for i in range(12):
        _picture(rng).save(data / "train" / f"good_{i}.png")
    for i in range(2):
        _picture(rng).save(data / "test/good" / f"{i}.png")
        _picture(rng).save(data / "test/bad" / f"{i}.png")
    broken.mkdir()
    for n, (suffix, seed) in enumerate(image_seeds(rng).items()):
        truncated = mutants(seed, rng, 1)[0]  # certainly bad
        for folder in (data / "train", data / "test/bad", broken):
            (folder / f"fuzz_{n}.{suffix}").write_bytes(truncated)

    def run(*argv) -> tuple[int, str, str]:
        code = main([str(a) for a in argv])
        captured = capsys.readouterr()
        return code, captured.out, captured.err.strip()

    code, _, err = run("train", "--data", data, "--out", tmp_path / "refused", *tiny_args)
    assert code == 2 and err.startswith("funetgan: error: ") and "bad file(s)" in err and "\n" not in err

    for policy in ("error", "skip"):
        clean = tmp_path / f"clean_{policy}"
        (clean / "train").mkdir(parents=True)
        for picture in (data / "train").glob("good_*.png"):
            (clean / "train" / picture.name).write_bytes(picture.read_bytes())
        source = data if policy == "skip" else clean
        with pytest.warns(UserWarning, match="skipped") if policy == "skip" else _nothing():
            code, out, err = run("train", "--data", source, "--out", tmp_path / f"run_{policy}", *tiny_args,
                                 "--set", f"data.on_bad_file={policy}")
        assert code == 0, err
        assert ("skipped 4 bad file(s)" in out) == (policy == "skip")
        for argv in (("test", "--run", tmp_path / f"run_{policy}", "--data", data, "--out", tmp_path / f"t_{policy}"),
                     ("predict", "--run", tmp_path / f"run_{policy}", "--out", tmp_path / f"p_{policy}", broken,
                      data / "test/good")):
            with pytest.warns(UserWarning, match="skipped") if policy == "skip" else _nothing():
                code, out, err = run(*argv)
            if policy == "error":
                assert code == 2 and "bad file(s)" in err and "fuzz_0" in err and "\n" not in err, err
            else:
                assert code == 0 and "skipped 4 bad file(s)" in out and "fuzz_0" in out, err


def _nothing():
    import contextlib
    return contextlib.nullcontext()


def _png_of_zeros(width: int, height: int) -> bytes:
    """A valid RGB PNG of zeros: a few hundred kB that decode to width x height x 3 bytes."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    packer, row = zlib.compressobj(9), bytes(1 + 3 * width)  # filter byte + pixels
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def test_a_decompression_bomb_under_pils_error_limit_is_refused(tmp_path):
    """PIL raises only above twice MAX_IMAGE_PIXELS and merely warns between: this 432 MB
    image (100 kB on disk) was decoded."""
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_of_zeros(12_000, 12_000))
    before = _peak_mb()
    with pytest.warns(Image.DecompressionBombWarning), \
            pytest.raises(DataError, match=r"bomb.png \(12000x12000 pixels, more than the limit .* decompression bomb"):
        load_unlabelled([str(path)], 32, 1, DataConfig())
    assert _peak_mb() - before < 100
