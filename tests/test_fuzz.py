"""Fuzzed inputs: a seeded corpus of mutated and truncated PNG, TIFF, JPEG, DICOM, NIfTI and IDX
files, written by the test itself. Every case gives a one-line error naming the file, or a
listed skip; never a traceback, a hang or unbounded memory. The default run checks a few
mutants per format; `-m slow` checks many."""

import gzip
import io
import os
import resource
import signal
import struct
import tempfile
import tracemalloc
import zlib
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from funetgan.cli import main
from funetgan.config import Config, DataConfig, all_keys, apply_overrides
from funetgan.data import DataError, load_dataset, load_unlabelled
from funetgan.errors import FunetganError

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
    return {
        "png": _encoded(_picture(rng), format="PNG"),
        "rgb.png": _encoded(_picture(rng, "RGB"), format="PNG"),
        "tif": _encoded(sixteen, format="TIFF"),
        "jpg": _encoded(_picture(rng, "RGB"), format="JPEG"),
    }


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
            made.append(data[: int(rng.integers(0, len(data) if i % 2 else min(len(data), 64)))])
        elif kind == 1:
            changed = bytearray(data)
            for position in rng.integers(0, len(data), int(rng.integers(1, 12))):
                changed[position] = int(rng.integers(0, 256))
            made.append(bytes(changed))
        else:
            changed = bytearray(data)
            start = int(rng.integers(0, min(len(data) - 4, 400)))
            changed[start : start + 4] = rng.choice(
                [b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\0\0\0\0", b"\x80\0\0\0"]
            )
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
                _check_case(
                    lambda: load_unlabelled(
                        [str(path)],  # noqa: B023
                        32,
                        1,  # noqa: B023 (called at once)
                        DataConfig(on_bad_file=policy),  # noqa: B023
                    ),  # noqa: B023
                    path.name,
                    problems,
                    watchdog,
                )
    seed = idx_seed(rng)
    header_cuts = [seed[:n] for n in range(0, 20, 3)]  # 4..15 bytes: the dimensions cut short
    for i, mutant in enumerate(header_cuts + mutants(seed, rng, count)):
        root = tmp_path / f"idx_{i:03d}"
        root.mkdir()
        (root / "train-images-idx3-ubyte").write_bytes(mutant)
        (root / "train-labels-idx1-ubyte").write_bytes(struct.pack(">BBBBI", 0, 0, 8, 1, 6) + bytes(6))
        _check_case(
            lambda: load_dataset(root, 32, 1, DataConfig(normal_class=0)),  # noqa: B023 (called at once)
            "train-images-idx3-ubyte",
            problems,
            watchdog,
        )
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
            code, out, err = run(
                "train",
                "--data",
                source,
                "--out",
                tmp_path / f"run_{policy}",
                *tiny_args,
                "--set",
                f"data.on_bad_file={policy}",
            )
        assert code == 0, err
        assert ("skipped 4 bad file(s)" in out) == (policy == "skip")
        for argv in (
            ("test", "--run", tmp_path / f"run_{policy}", "--data", data, "--out", tmp_path / f"t_{policy}"),
            (
                "predict",
                "--run",
                tmp_path / f"run_{policy}",
                "--out",
                tmp_path / f"p_{policy}",
                broken,
                data / "test/good",
            ),
        ):
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
    with (
        pytest.warns(Image.DecompressionBombWarning),
        pytest.raises(DataError, match=r"bomb.png \(12000x12000 pixels, more than the limit .* decompression bomb"),
    ):
        load_unlabelled([str(path)], 32, 1, DataConfig())
    assert _peak_mb() - before < 100


# ----- Property-based (hypothesis) --------------------------------------------------------------
# Every reader and the settings parser, on generated and mutated inputs: a result, or an error the
# CLI reports in one line (funetgan.errors.FunetganError) naming the file or setting; within
# SECONDS_PER_CASE and TRACED_MB_PER_CASE of Python and numpy allocations per input. The "ci"
# profile is derandomised with a fixed budget of examples, so CI runs the same inputs every time
# (about a minute on a loaded 2-core machine); HYPOTHESIS_PROFILE=deep explores far more.

TRACED_MB_PER_CASE = 256
# The pixel limit during fuzzing: an image the limit accepts may rightly take ~12 bytes a pixel
# (decoded, then float32 copies), so with PIL's own limit (89 M pixels) a legitimate input could
# pass TRACED_MB_PER_CASE. Lowered, anything above the bound is memory no limit accounts for.
FUZZ_MAX_IMAGE_PIXELS = 1 << 20
_QUIET = [
    HealthCheck.function_scoped_fixture,
    HealthCheck.too_slow,
    HealthCheck.data_too_large,
    HealthCheck.filter_too_much,
]
settings.register_profile(
    "ci", max_examples=100, derandomize=True, database=None, deadline=None, suppress_health_check=_QUIET
)
settings.register_profile("deep", max_examples=500, deadline=None, suppress_health_check=_QUIET)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def _one_line_or_result(read, name: str) -> None:
    """`read()` returns, or raises an expected error in one line naming `name`; bounded."""

    def expire(signum, frame):
        raise TimeoutError(f"{name}: a generated input took over {SECONDS_PER_CASE} s (a hang?)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(SECONDS_PER_CASE)
    tracemalloc.start()
    try:
        with mock.patch.object(Image, "MAX_IMAGE_PIXELS", FUZZ_MAX_IMAGE_PIXELS):
            read()
    except FunetganError as err:
        assert "\n" not in str(err) and name in str(err), f"not one line naming {name}: {err!r}"
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert peak < TRACED_MB_PER_CASE << 20, f"{name}: {peak >> 20} MB traced for one input"


EXTREMES = [b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\0\0\0\0", b"\x80\0\0\0", b"\0\0\x01\0"]


def _apply(seed: bytes, cut: int, changes: list[tuple[int, int]], extreme: tuple[int, bytes] | None) -> bytes:
    changed = bytearray(seed)
    for position, value in changes:
        changed[position % len(changed)] = value
    if extreme is not None:
        start = extreme[0] % max(1, len(changed) - 4)
        changed[start : start + 4] = extreme[1]
    return bytes(changed[:cut])


def mutated(seed: bytes) -> st.SearchStrategy[bytes]:
    """`seed` cut short, with bytes changed, and/or a 4-byte field set to an extreme value (a huge
    or negative size, zero); or random bytes."""
    edits = st.builds(
        _apply,
        st.just(seed),
        st.integers(0, len(seed)) | st.just(len(seed)),
        st.lists(st.tuples(st.integers(0, len(seed)), st.integers(0, 255)), max_size=12),
        st.none() | st.tuples(st.integers(0, min(len(seed), 600)), st.sampled_from(EXTREMES)),
    )
    return st.one_of(edits, st.binary(max_size=600))


_SEED_RNG = np.random.default_rng(29)
IMAGE_SEEDS = image_seeds(_SEED_RNG)


@pytest.mark.parametrize("suffix", sorted(IMAGE_SEEDS))
def test_any_image_file_gives_images_or_a_one_line_error(tmp_path, suffix):
    @given(data=mutated(IMAGE_SEEDS[suffix]))
    def check(data):
        path = tmp_path / f"case.{suffix}"
        path.write_bytes(data)
        _one_line_or_result(lambda: load_unlabelled([str(path)], 32, 1, DataConfig()), path.name)

    check()


PIXEL_VALUES = st.sampled_from([0.0, 0.5, 1.0, -1.0, 1e30, -1e30, float("nan"), float("inf"), -float("inf")])


@given(height=st.integers(1, 40), width=st.integers(1, 40), values=st.lists(PIXEL_VALUES, min_size=1, max_size=6))
def test_any_float_tiff_gives_an_image_or_a_one_line_error(tmp_path, height, width, values):
    pixels = np.resize(np.array(values, np.float32), (height, width))
    path = tmp_path / "float.tif"
    Image.fromarray(pixels, mode="F").save(path)
    _one_line_or_result(lambda: load_unlabelled([str(path)], 32, 1, DataConfig()), path.name)


def fixed_medical_seeds(writers) -> dict[str, bytes]:
    """`medical_seeds`, the same bytes in every run (the DICOM's random UIDs fixed)."""
    with tempfile.TemporaryDirectory() as folder:
        seeds = medical_seeds(np.random.default_rng(3), Path(folder), writers)
        if "dcm" in seeds:
            import pydicom

            dataset = pydicom.dcmread(io.BytesIO(seeds["dcm"]))
            dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
            buffer = io.BytesIO()
            dataset.save_as(buffer, enforce_file_format=True)
            seeds["dcm"] = buffer.getvalue()
    return seeds


@pytest.mark.parametrize("suffix", ["dcm", "nii"])
def test_any_dicom_or_nifti_file_gives_slices_or_a_one_line_error(tmp_path, suffix, medical_writers):
    seeds = fixed_medical_seeds(medical_writers)
    if suffix not in seeds:
        pytest.skip("pydicom or nibabel not installed")

    @given(data=mutated(seeds[suffix]))
    def check(data):
        path = tmp_path / f"case.{suffix}"
        path.write_bytes(data)
        _one_line_or_result(lambda: load_unlabelled([str(path)], 32, 1, DataConfig()), path.name)

    check()


@given(
    shape=st.lists(st.integers(0, 9), min_size=1, max_size=5),
    dtype=st.sampled_from(["uint8", "int16", "float32"]),
    values=st.lists(PIXEL_VALUES, min_size=1, max_size=4),
    gz=st.booleans(),
    scale=st.sampled_from([1.0, 0.0, -2.0, 1e-30, 1e30, float("nan")]),
)
def test_any_nifti_volume_gives_slices_or_a_one_line_error(tmp_path, shape, dtype, values, gz, scale):
    nibabel = pytest.importorskip("nibabel")
    with np.errstate(all="ignore"):
        volume = np.resize(np.array(values, np.float64), shape).astype(dtype)
    plain, path = tmp_path / "plain.nii", tmp_path / ("volume.nii.gz" if gz else "volume.nii")
    nibabel.Nifti1Image(volume, np.diag([1.0, 1.0, 2.0, 1.0])).to_filename(plain)
    data = bytearray(plain.read_bytes())  # the x voxel size written past nibabel's own checks:
    data[80:84] = data[280:284] = struct.pack("<f", scale)  # pixdim[1] and srow_x[0]
    path.write_bytes(gzip.compress(bytes(data), mtime=0) if gz else bytes(data))
    _one_line_or_result(lambda: load_unlabelled([str(path)], 32, 1, DataConfig()), path.name)


@given(data=mutated(idx_seed(np.random.default_rng(5))), gz=st.booleans())
def test_any_idx_file_gives_images_or_a_one_line_error(tmp_path, data, gz):
    root = tmp_path / "idx"
    root.mkdir(exist_ok=True)
    for old in root.iterdir():
        old.unlink()
    name = "train-images-idx3-ubyte" + ".gz" * gz
    (root / name).write_bytes(gzip.compress(data, mtime=0) if gz else data)
    (root / "train-labels-idx1-ubyte").write_bytes(struct.pack(">BBBBI", 0, 0, 8, 1, 6) + bytes(6))
    _one_line_or_result(lambda: load_dataset(root, 32, 1, DataConfig(normal_class=0)), str(root))


# Values as people might type them after `--set key=`, and what an attacker would.
SET_VALUES = st.one_of(
    st.sampled_from(
        [
            "inf",
            ".inf",
            "-.inf",
            ".nan",
            "nan",
            "1e400",
            "9" * 400,
            "1" * 5000,
            "-1",
            "0",
            "1e-400",
            "null",
            "~",
            "[]",
            "{}",
            "[1, 2]",
            "[-1000, 400]",
            "&a [*a]",
            "[" * 60 + "]" * 60,
            "yes",
            "!!python/object/apply:os.system [echo]",
            "native",
            "1000000",
            "0x10",
            "1_000",
            "2.5",
            "'32'",
        ]
    ),
    st.integers().map(str),
    st.floats().map(repr),
    st.text(max_size=30),
)
_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
YAML_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@given(key=st.sampled_from(all_keys()), value=SET_VALUES)
def test_any_set_value_gives_settings_or_a_one_line_error_naming_the_key(key, value):
    _one_line_or_result(lambda: apply_overrides(Config(), [f"{key}={value}"]), key)


def _settings_document(choice: tuple) -> str:
    kind, payload = choice
    if kind == "text":
        return payload
    if kind == "edited":  # the full settings file with one value replaced
        key, value = payload
        section, _, leaf = key.rpartition(".")
        values = Config().to_dict()
        (values[section] if section else values)[leaf] = value
        return yaml.safe_dump(values)
    return yaml.safe_dump(payload)


SETTINGS_DOCUMENTS = st.one_of(
    st.tuples(st.just("text"), st.text(max_size=200) | SET_VALUES),
    st.tuples(st.just("edited"), st.tuples(st.sampled_from(all_keys()), YAML_VALUES)),
    st.tuples(
        st.just("tree"),
        st.dictionaries(st.sampled_from(["model", "gan", "score", "data", "seed", "x"]), YAML_VALUES, max_size=4),
    ),
).map(_settings_document)


@given(document=SETTINGS_DOCUMENTS)
def test_any_settings_file_gives_settings_or_a_one_line_error_naming_it(tmp_path, document):
    path = tmp_path / "settings.yaml"
    path.write_text(document, encoding="utf-8", errors="surrogatepass")
    _one_line_or_result(lambda: Config.load(path), str(path))
