import io
import json
import os
import pickle
import signal
import subprocess
import sys
import tarfile
import time
import zipfile

import numpy as np
import pandas as pd
import psutil
import pytest
from PIL import Image, ImageCms

from colorizer import fast
from colorizer.cli import main
from colorizer.colorize.bulk import colorize
from colorizer.colorize.inference import predict_in_halves
from colorizer.colorize.report import HISTORY_NAME, REPORT_NAME
from colorizer.config import ColorizeOptions, UserError
from colorizer.data.lab import rgb_to_lab
from colorizer.files import is_temp_name
from tests.helpers import PROGRAMS, colourful, encode, resize_disk


def grey(width, height, seed=0):
    return np.asarray(Image.fromarray(colourful(width, height, seed=seed)).convert("L"))


def run(src, dst, model_dir, **options):
    options.setdefault("workers", 1)
    return colorize(src, dst, model_dir, ColorizeOptions.from_flags(**options))


def report(dst):
    return pd.read_csv(dst / REPORT_NAME, keep_default_na=False).set_index("path")


def test_output_size_matches_input_including_exif_rotation_and_extremes(tmp_path, model_dir):
    src = tmp_path / "src"
    (src / "nested" / "deeper").mkdir(parents=True)
    Image.fromarray(grey(1, 1)).save(src / "one pixel.png")
    Image.fromarray(grey(6000, 150)).save(src / "nested" / "panorama.jpg", quality=80)
    rotated = Image.fromarray(grey(80, 40))
    exif = rotated.getexif()
    exif[0x0112] = 6
    rotated.save(src / "nested" / "deeper" / "rotated.jpg", exif=exif.tobytes())
    Image.fromarray(grey(64, 48)).save(src / "nested" / "ünïcødé name ✓.png")
    (src / "notes.txt").write_text("not a photo, and not named like one: ignored")

    summary = run(src, tmp_path / "dst", model_dir)

    rows = report(tmp_path / "dst")
    assert sorted(rows.index) == [
        "nested/deeper/rotated.jpg",
        "nested/panorama.jpg",
        "nested/ünïcødé name ✓.png",
        "one pixel.png",
    ]
    assert (rows.status == "done").all() and summary.count("done") == 4
    expected = {
        "one pixel.png": (1, 1),
        "nested/panorama.jpg": (6000, 150),
        "nested/deeper/rotated.jpg": (40, 80),
        "nested/ünïcødé name ✓.png": (64, 48),
    }
    for relative, size in expected.items():
        with Image.open(tmp_path / "dst" / relative) as out:
            out.load()
            assert out.size == size, relative
            assert out.getexif().get(0x0112, 1) == 1  # upright pixels, orientation reset
        assert (rows.loc[relative, "width"], rows.loc[relative, "height"]) == size


def test_output_keeps_the_original_L_and_is_coloured(tmp_path, model_dir):
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(grey(96, 64)).save(src / "scan.png")
    run(src, tmp_path / "dst", model_dir)
    out = np.asarray(Image.open(tmp_path / "dst" / "scan.png").convert("RGB"))
    L_in = rgb_to_lab(np.repeat(grey(96, 64)[..., None], 3, axis=2))[..., 0]
    L_out = rgb_to_lab(out)[..., 0]
    assert np.median(np.abs(L_out - L_in)) < 1.0  # the photo's own L, full resolution (gamut clips a few)
    assert np.abs(rgb_to_lab(out)[..., 1:]).mean() > 0.5  # and not grey any more


def test_bad_inputs_are_failed_rows_and_the_run_goes_on(tmp_path, model_dir):
    src = tmp_path / "src"
    src.mkdir()
    (src / "empty.jpg").write_bytes(b"")
    (src / "text.png").write_text("hello")
    good = encode(grey(64, 64), "JPEG")
    (src / "truncated.jpg").write_bytes(good[: len(good) // 2])
    Image.fromarray(grey(400, 300)).save(src / "bomb.png")
    Image.fromarray(grey(32, 32)).save(src / "fine.png")
    run(src, tmp_path / "dst", model_dir, max_pixels=100_000)
    rows = report(tmp_path / "dst")
    assert rows.loc["fine.png", "status"] == "done"
    assert rows.loc["empty.jpg", "reason"] == "empty file"
    assert rows.loc["text.png", "reason"] == "not an image"
    assert rows.loc["truncated.jpg", "reason"].startswith("truncated")
    assert rows.loc["bomb.png", "reason"].startswith("decompression bomb")
    assert sorted(p.name for p in (tmp_path / "dst").iterdir()) == [HISTORY_NAME, REPORT_NAME, "fine.png"]


def test_dry_run_lists_what_would_be_done_and_writes_nothing(tmp_path, model_dir, capsys):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    Image.fromarray(grey(40, 30)).save(src / "a.png")
    Image.fromarray(grey(40, 30)).save(src / "sub" / "b.jpg")
    (src / "link.png").symlink_to(src / "a.png")
    run(src, tmp_path / "dst", model_dir)  # a.png, sub/b.jpg done
    (tmp_path / "dst" / "sub" / "b.jpg").unlink()
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    capsys.readouterr()
    assert main(["colorize", str(src), str(tmp_path / "dst"), "--dry-run"]) == 0
    captured = capsys.readouterr()
    lines = [line.split("\t") for line in captured.out.splitlines()]
    assert lines == [
        ["skip", "a.png", "output exists"],
        ["fail", "link.png", "link: symbolic links are not followed"],
        ["colorize", "sub/b.jpg", str(tmp_path / "dst" / "sub" / "b.jpg")],
    ]
    assert "dry run: 1 to colorize, 1 skipped, 1 refused; nothing was written" in captured.err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert main(["colorize", str(src), str(tmp_path / "new-dst"), "--dry-run"]) == 0
    assert not (tmp_path / "new-dst").exists()


def test_quiet_shows_only_problems_and_verbose_adds_detail(tmp_path, model_dir, capsys, monkeypatch):
    monkeypatch.setenv("COLORIZER_PROGRESS", "1")  # bars on, as on a terminal
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(grey(40, 30)).save(src / "a.png")
    args = ["colorize", str(src), "--model", str(model_dir), "--workers", "1"]
    assert main([*args[:2], str(tmp_path / "d1"), *args[2:]]) == 0
    normal = capsys.readouterr().err
    assert "colorize: 1 done, 0 skipped, 0 failed" in normal and "img/s" in normal  # summary and bar
    assert main([*args[:2], str(tmp_path / "d2"), *args[2:], "-q"]) == 0
    assert capsys.readouterr().err == ""
    assert main(["-q", *args[:2], str(tmp_path / "d2-before"), *args[2:]]) == 0  # before the command too
    assert capsys.readouterr().err == ""
    assert main([*args[:2], str(tmp_path / "d3"), *args[2:], "-v"]) == 0
    verbose = capsys.readouterr().err
    assert "DEBUG colorizer.colorize.bulk: colorize: model at 32 px on cpu" in verbose and "1 done" in verbose


def test_strict_exit_code_and_fatal_errors(tmp_path, model_dir, capsys):
    src = tmp_path / "src"
    src.mkdir()
    (src / "broken.jpg").write_bytes(b"\xff\xd8 nope")
    args = [str(src), str(tmp_path / "dst"), "--model", str(model_dir), "--workers", "0"]
    assert main(["colorize", *args]) == 0
    assert main(["colorize", *args, "--strict", "--overwrite"]) == 1
    assert main(["colorize", str(tmp_path / "missing"), str(tmp_path / "dst"), "--model", str(model_dir)]) == 2
    assert main(["colorize", str(src), str(tmp_path / "dst"), "--model", str(tmp_path / "no-model")]) == 2
    (tmp_path / "a-file").write_text("x")
    assert main(["colorize", str(src), str(tmp_path / "a-file" / "dst"), "--model", str(model_dir)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("colorizer colorize:")]
    assert len(errors) == 3
    assert "no such folder or archive" in errors[0] and "no trained model here" in errors[1]
    assert "cannot write here" in errors[2]


def test_modes_alpha_icc_exif_and_provenance(tmp_path, model_dir):
    src = tmp_path / "src"
    src.mkdir()
    ramp = (np.linspace(0, 65535, 64)[None, :].repeat(32, 0)).astype(np.uint16)
    Image.fromarray(ramp).save(src / "sixteen.png")
    rgba = np.dstack([np.repeat(grey(40, 30)[..., None], 3, axis=2), np.full((30, 40), 128, np.uint8)])
    rgba[:, :10, 3] = 0
    Image.fromarray(rgba, "RGBA").save(src / "alpha.png")
    palette = Image.fromarray(grey(40, 30)).convert("P")
    palette.save(src / "palette.gif")
    Image.new("CMYK", (40, 30), (0, 0, 0, 100)).save(src / "cmyk.jpg")
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    tagged = Image.fromarray(colourful(40, 30))
    exif = tagged.getexif()
    exif[0x010F] = "ScanCo"  # Make
    tagged.save(src / "tagged.jpg", icc_profile=srgb, exif=exif.tobytes())

    run(src, tmp_path / "dst", model_dir)
    assert (report(tmp_path / "dst").status == "done").all()
    dst = tmp_path / "dst"
    sixteen = np.asarray(Image.open(dst / "sixteen.png").convert("L"))
    assert sixteen[:, :8].mean() < 40 and (sixteen < 250).mean() > 0.85  # scaled, not clipped to white
    alpha = Image.open(dst / "alpha.png")
    assert alpha.mode == "RGBA" and np.array_equal(np.asarray(alpha)[..., 3], rgba[..., 3])
    assert Image.open(dst / "palette.gif").size == (40, 30)
    assert Image.open(dst / "cmyk.jpg").mode == "RGB"
    with Image.open(dst / "tagged.jpg") as out:
        assert out.info.get("icc_profile") == srgb
        kept = out.getexif()
        assert kept[0x010F] == "ScanCo" and kept[0x0131] == "colorizer" and "model sha256" in kept[0x010E]
    with Image.open(dst / "sixteen.png") as out:
        assert out.text["Software"] == "colorizer" and "model sha256" in out.text["Description"]


def test_format_option_and_overwrite(tmp_path, model_dir):
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(grey(40, 30)).save(src / "a.tif")
    run(src, tmp_path / "dst", model_dir, format="WEBP")
    assert Image.open(tmp_path / "dst" / "a.webp").format == "WEBP"
    again = run(src, tmp_path / "dst", model_dir, format="WEBP")
    assert again.count("skipped") == 1 and again.count("done") == 0
    forced = run(src, tmp_path / "dst", model_dir, format="WEBP", overwrite=True)
    assert forced.count("done") == 1


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_archives_refuse_traversal_and_links(tmp_path, model_dir, kind):
    good = encode(grey(40, 30), "PNG")
    archive_path = tmp_path / f"scans.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(archive_path, "w") as archive:
            archive.writestr("box 1/page.png", good)
            archive.writestr("../../escape.png", good)
            archive.writestr("/etc/evil.png", good)
    else:
        with tarfile.open(archive_path, "w:gz") as archive:
            for name in ("box 1/page.png", "../../escape.png"):
                info = tarfile.TarInfo(name)
                info.size = len(good)
                archive.addfile(info, io.BytesIO(good))
            link = tarfile.TarInfo("link.png")
            link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
            archive.addfile(link)
    dst = tmp_path / "out" / "dst"
    run(archive_path, dst, model_dir)
    rows = report(dst)
    assert rows.loc["box 1/page.png", "status"] == "done" and (dst / "box 1" / "page.png").is_file()
    assert rows.loc["../../escape.png", "reason"].startswith("unsafe path")
    assert (rows.status == "failed").sum() == 2
    assert not (tmp_path / "escape.png").exists() and not (tmp_path / "out" / "escape.png").exists()


def test_model_errors_retry_smaller_batches_then_fail_only_that_image():
    seen = []

    def picky_model(batch):
        seen.append(len(batch))
        if len(batch) > 2:
            raise RuntimeError("out of memory (injected)")
        if (batch == 7).any():
            raise RuntimeError("bad input (injected)")
        return batch * 2

    batch = [np.full((1, 2, 2), i, np.float32) for i in range(8)]
    results = predict_in_halves(picky_model, batch)
    assert seen[:3] == [8, 4, 2]
    assert [isinstance(r, Exception) for r in results] == [False] * 7 + [True]
    assert float(results[3].mean()) == 6.0


def test_killed_run_resumes_without_redoing_work(tmp_path, model_dir):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(60):
        Image.fromarray(grey(640, 480, seed=i)).save(src / f"scan {i:03d}.png")
    dst = tmp_path / "dst"
    command = [
        sys.executable,
        "-m",
        "colorizer.cli",
        "colorize",
        str(src),
        str(dst),
        "--model",
        str(model_dir),
        "--workers",
        "1",
        "--worker-kind",
        "processes",
        "--batch-size",
        "2",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(dst.glob("scan*.png"))) < 5:
        time.sleep(0.02)
    helpers = psutil.Process(process.pid).children(recursive=True)  # the worker processes
    assert helpers, "colorize should run worker processes"
    process.send_signal(signal.SIGKILL)  # kill -9 of the job's main process only
    process.wait()
    gone, alive = psutil.wait_procs(helpers, timeout=10)
    assert not alive, "workers must not outlive a killed run"
    finished = sorted(p.name for p in dst.glob("scan*.png"))
    assert 5 <= len(finished) < 60, "the kill should land mid-run"
    for name in finished:
        with Image.open(dst / name) as out:
            out.load()  # every file that has its final name is whole
            assert out.size == (640, 480)

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    rows = report(dst)
    assert len(rows) == 60 and set(rows.status) <= {"done", "skipped"}
    assert sorted(rows.index[rows.status == "skipped"]) == finished  # none redone
    assert not [p for p in dst.iterdir() if is_temp_name(p.name)]  # no temp leftovers
    assert os.path.getsize(dst / REPORT_NAME) > 0


def test_every_kind_of_worker_writes_the_same_files(tmp_path, model_dir):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(5):
        Image.fromarray(grey(120 + 8 * i, 90, seed=i)).save(src / f"scan {i}.jpg", quality=90)
    Image.fromarray(colourful(100, 70)).save(src / "colour.png")
    (src / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    outputs = {}
    for kind, workers in (("threads", 2), ("processes", 2), ("auto", 0)):
        dst = tmp_path / f"{kind}-{workers}"
        run(src, dst, model_dir, workers=workers, worker_kind=kind, batch_size=2)
        outputs[kind, workers] = {
            p.name: p.read_bytes() for p in dst.iterdir() if p.name not in (REPORT_NAME, HISTORY_NAME)
        }
        assert report(dst).status.to_dict() == {
            **{f"scan {i}.jpg": "done" for i in range(5)},
            "colour.png": "done",
            "broken.jpg": "failed",
        }
    assert len(outputs[("threads", 2)]) == 6
    assert outputs[("threads", 2)] == outputs[("processes", 2)] == outputs[("auto", 0)]


def test_an_unknown_worker_kind_is_refused_by_name(tmp_path, model_dir):
    (tmp_path / "src").mkdir()
    with pytest.raises(UserError, match="--worker-kind: .*'fibres'"):
        run(tmp_path / "src", tmp_path / "dst", model_dir, worker_kind="fibres")


def test_photos_are_decoded_once_and_handed_on_compactly(tmp_path):
    from colorizer.colorize.worker import CARRY_MAX_BYTES, Job, Prediction, finish, prepare

    (tmp_path / "grey.jpg").write_bytes(encode(grey(640, 480), "JPEG", quality=90))
    (tmp_path / "colour.jpg").write_bytes(encode(colourful(640, 480), "JPEG", quality=90))
    (tmp_path / "huge.jpg").write_bytes(encode(np.zeros((1000, CARRY_MAX_BYTES // 1000 + 1), np.uint8), "JPEG"))
    (tmp_path / "huge_colour.jpg").write_bytes(encode(colourful(1000, CARRY_MAX_BYTES // 3000 + 1), "JPEG"))

    def job(name, target):
        return Job(0, name, str(tmp_path / target), "JPEG", source_file=str(tmp_path / name))

    ab = np.random.default_rng(0).uniform(-30, 30, (2, 32, 32)).astype(np.float32)
    for name, planes in (("grey.jpg", 1), ("colour.jpg", 3)):
        prepared = prepare(job(name, "a.jpg"), 32, 10**8)
        carried = prepared.decoded
        assert prepared.L_small.shape == (1, 32, 32) and (prepared.width, prepared.height) == (640, 480)
        assert carried is not None and carried.rgb.shape == (480, 640, 3) and carried.is_grey == (planes == 1)
        assert len(pickle.dumps(carried)) < 1.1 * 640 * 480 * planes  # grey: the plane alone, not three channels
        unpickled = pickle.loads(pickle.dumps(carried))
        np.testing.assert_array_equal(unpickled.rgb, carried.rgb)

        assert finish(Prediction(job(name, "a.jpg"), ab, unpickled, 0.0), 95, 10**8, "test").status == "done"
        assert finish(Prediction(job(name, "b.jpg"), ab, None, 0.0), 95, 10**8, "test").status == "done"  # decoded here
        assert (tmp_path / "a.jpg").read_bytes() == (tmp_path / "b.jpg").read_bytes()

    for name in ("huge.jpg", "huge_colour.jpg"):  # too big to keep in flight: decoded reduced, again later
        prepared = prepare(job(name, "d.jpg"), 32, 10**9)
        assert prepared.decoded is None and prepared.L_small.shape == (1, 32, 32)


def test_without_model_the_shipped_model_colorizes_and_is_checked(tmp_path, monkeypatch):
    """`colorizer colorize SRC DST` with no --model: the shipped model, named by sha256 in each output."""
    import json
    import shutil

    from colorizer.training.checkpoints import GENERATOR_FILE, MODEL_INFO_FILE, PRETRAINED_DIR

    shipped = json.loads((PRETRAINED_DIR / MODEL_INFO_FILE).read_text())
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(grey(160, 120)).save(src / "scan.jpg", quality=95)
    assert main(["colorize", str(src), str(tmp_path / "dst"), "--workers", "1"]) == 0
    with Image.open(tmp_path / "dst" / "scan.jpg") as out:
        assert shipped["model_sha256"] in out.getexif()[0x010E]
        assert np.abs(rgb_to_lab(np.asarray(out.convert("RGB")))[..., 1:]).mean() > 1.0  # coloured

    damaged = tmp_path / "damaged"
    shutil.copytree(PRETRAINED_DIR, damaged)
    data = bytearray((damaged / GENERATOR_FILE).read_bytes())
    data[len(data) // 2] ^= 0x40
    (damaged / GENERATOR_FILE).write_bytes(bytes(data))
    assert main(["colorize", str(src), str(tmp_path / "dst2"), "--model", str(damaged)]) == 2
    assert not (tmp_path / "dst2" / "scan.jpg").exists()


def test_src_and_dst_must_not_overlap(tmp_path, model_dir):
    (tmp_path / "scans" / "inner").mkdir(parents=True)
    Image.fromarray(grey(40, 30)).save(tmp_path / "scans" / "a.png")
    for src, dst in [
        (tmp_path / "scans", tmp_path / "scans"),
        (tmp_path / "scans" / "inner", tmp_path / "scans"),  # SRC inside DST
        (tmp_path / "scans", tmp_path / "scans" / "out"),  # DST inside SRC: the next run reads outputs
    ]:
        with pytest.raises(UserError, match="overlap"):
            run(src, dst, model_dir)


def test_a_write_that_fails_midway_leaves_no_partial_file_and_the_rerun_finishes(tmp_path, model_dir):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    for i, side in enumerate((48, 64, 600)):  # the large one's JPEG is over the file-size limit below
        Image.fromarray(colourful(side, side, seed=i)).save(src / f"p{i}.jpg", quality=95)
    limited = subprocess.run(
        [sys.executable, str(PROGRAMS / "colorize_on_a_full_disk.py"), str(src), str(dst), str(model_dir), "40000"],
        capture_output=True,
        text=True,
    )
    assert limited.returncode == 0, limited.stderr
    rows = report(dst)
    assert rows.loc["p2.jpg", "status"] == "failed" and rows.loc["p2.jpg", "reason"].startswith("write failed")
    assert not (dst / "p2.jpg").exists() and not [p for p in dst.iterdir() if is_temp_name(p.name)]
    assert (rows.loc[["p0.jpg", "p1.jpg"], "status"] == "done").all()
    run(src, dst, model_dir)  # room again: only the failed photo is redone
    rows = report(dst)
    assert rows.loc["p2.jpg", "status"] == "done" and (rows.loc[["p0.jpg", "p1.jpg"], "status"] == "skipped").all()
    with Image.open(dst / "p2.jpg") as out:
        out.load()  # decodes whole: not truncated
        assert out.size == (600, 600)


def test_a_full_disk_loses_nothing_and_the_rerun_finishes(tmp_path, model_dir, small_disk):
    """DST on a real file system with room for half of 28 photos: whatever is on disk is whole
    and equals a clean run's output, the rest are failed rows (or the report says it could not be
    written); after making room the rerun redoes exactly those."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(28):
        Image.fromarray(colourful(400, 300, seed=i)).save(src / f"p{i:02d}.jpg", quality=95)
    run(src, tmp_path / "clean", model_dir)
    needed = sum(p.stat().st_size for p in (tmp_path / "clean").iterdir())
    dst = small_disk(max(64, needed // 2048))  # kilobytes: half of what the outputs need
    try:
        summary = run(src, dst, model_dir)
        rows = report(dst)
        failed = set(rows.index[rows.status == "failed"])
        assert failed and all(rows.loc[list(failed), "reason"].str.contains("No space left on device"))
    except UserError as e:  # the disk was too full for the report itself: said in one line
        assert "could not write the report" in str(e)
        summary, failed = None, None
    written = sorted(p.name for p in dst.iterdir() if p.suffix == ".jpg")
    assert not [p for p in dst.iterdir() if is_temp_name(p.name)]
    for name in written:
        assert (dst / name).read_bytes() == (tmp_path / "clean" / name).read_bytes(), name  # whole, not cut short
    if failed is not None:
        assert failed == {f"p{i:02d}.jpg" for i in range(28)} - set(written)
        assert summary.count("done") == len(written)
    resize_disk(dst, 16384)
    run(src, dst, model_dir)
    rows = report(dst)
    assert (rows.status != "failed").all() and set(rows.index[rows.status == "skipped"]) == set(written)
    for i in range(28):
        assert (dst / f"p{i:02d}.jpg").read_bytes() == (tmp_path / "clean" / f"p{i:02d}.jpg").read_bytes()


def test_a_model_with_nan_weights_is_refused(tmp_path, model_dir):
    import shutil

    from safetensors.torch import load_file, save_file

    from colorizer.training.checkpoints import GENERATOR_FILE, MODEL_INFO_FILE, sha256_of

    broken = tmp_path / "model"
    shutil.copytree(model_dir, broken)
    tensors = load_file(str(broken / GENERATOR_FILE))
    tensors["head.weight"][:] = float("nan")  # what a diverged training exports
    save_file(tensors, str(broken / GENERATOR_FILE))
    info = json.loads((broken / MODEL_INFO_FILE).read_text())
    (broken / MODEL_INFO_FILE).write_text(json.dumps(info | {"model_sha256": sha256_of(broken / GENERATOR_FILE)}))
    (tmp_path / "src").mkdir()
    Image.fromarray(grey(40, 30)).save(tmp_path / "src" / "a.png")
    with pytest.raises(UserError, match="NaN or inf"):
        run(tmp_path / "src", tmp_path / "dst", broken)
    assert not (tmp_path / "dst" / "a.png").exists()


def test_finite_weights_that_predict_nan_fail_each_photo_and_write_nothing(tmp_path, model_dir):
    """Weights that load (finite, the right sha256) but overflow to inf - inf = NaN inside the network."""
    import shutil

    from safetensors.torch import load_file, save_file

    from colorizer.training.checkpoints import GENERATOR_FILE, MODEL_INFO_FILE, sha256_of

    broken = tmp_path / "model"
    shutil.copytree(model_dir, broken)
    tensors = load_file(str(broken / GENERATOR_FILE))
    for name in [name for name, t in tensors.items() if t.dim() == 4]:  # every convolution's weights
        tensors[name] = tensors[name] * 1e20  # finite, but the activations overflow within a few layers
    save_file(tensors, str(broken / GENERATOR_FILE))
    info = json.loads((broken / MODEL_INFO_FILE).read_text())
    (broken / MODEL_INFO_FILE).write_text(json.dumps(info | {"model_sha256": sha256_of(broken / GENERATOR_FILE)}))
    (tmp_path / "src").mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(grey(40, 30)).save(tmp_path / "src" / name)
    run(tmp_path / "src", tmp_path / "dst", broken, precision="fp32")
    rows = report(tmp_path / "dst")
    assert (rows.status == "failed").all() and rows.reason.str.contains("prediction is not finite").all()
    assert sorted(p.name for p in (tmp_path / "dst").iterdir()) == [HISTORY_NAME, REPORT_NAME]


def test_a_single_photo_is_a_valid_src(tmp_path, model_dir):
    Image.fromarray(grey(40, 30)).save(tmp_path / "scan.png")
    run(tmp_path / "scan.png", tmp_path / "out", model_dir)
    assert report(tmp_path / "out").loc["scan.png", "status"] == "done"
    assert Image.open(tmp_path / "out" / "scan.png").size == (40, 30)
    (tmp_path / "notes.txt").write_text("not a photo")
    with pytest.raises(UserError, match="image file"):
        run(tmp_path / "notes.txt", tmp_path / "out2", model_dir)
    with pytest.raises(UserError, match="overlap"):  # its output would be the photo itself
        run(tmp_path / "scan.png", tmp_path, model_dir, overwrite=True)


def test_sigterm_ends_a_run_like_ctrl_c_with_a_message_and_a_report(tmp_path, model_dir):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    for i in range(60):
        Image.fromarray(grey(640, 480, seed=i)).save(src / f"scan {i:03d}.png")
    command = [sys.executable, "-m", "colorizer.cli", "colorize", str(src), str(dst), "--model", str(model_dir)]
    process = subprocess.Popen([*command, "--workers", "1", "--batch-size", "2"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(dst.glob("scan*.png"))) < 3:
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)  # what a cluster scheduler sends at the time limit
    stderr = process.communicate(timeout=60)[1]
    assert process.returncode == 130 and "colorizer colorize: interrupted" in stderr
    rows = report(dst)  # the photos done so far are in the report
    assert 3 <= (rows.status == "done").sum() < 60
    assert sorted(rows.index[rows.status == "done"]) == sorted(p.name for p in dst.glob("scan*.png"))


def test_a_file_name_that_is_not_utf8_is_colorized_and_reported(tmp_path, model_dir):
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(grey(40, 30)).save(tmp_path / "scan.png")
    os.rename(tmp_path / "scan.png", os.fsencode(src) + b"/caf\xe9.png")  # Latin-1 'café' from an old archive
    run(src, tmp_path / "dst", model_dir)
    assert (os.fsencode(tmp_path / "dst") + b"/caf\xe9.png") in [os.fsencode(p) for p in (tmp_path / "dst").iterdir()]
    lines = (tmp_path / "dst" / REPORT_NAME).read_bytes().splitlines()
    assert lines[1].startswith(b"caf\xe9.png,done,")  # the name's own bytes


def test_an_archive_is_read_member_by_member_not_whole(tmp_path, model_dir):
    """Peak memory grows with the pipeline's window, not with the archive: 48 members of ~2.9 MB (noise
    does not compress) cost much less than the 140 MB they hold."""
    rng = np.random.default_rng(0)
    member = encode(rng.integers(0, 256, (980, 1000, 3), dtype=np.uint8).astype(np.uint8))
    peaks = {}
    for count in (4, 48):
        archive = tmp_path / f"scans{count}.zip"
        with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zf:
            for i in range(count):
                zf.writestr(f"scan{i:03d}.png", member)
        command = [sys.executable, "-m", "colorizer.cli", "colorize", str(archive), str(tmp_path / f"out{count}")]
        command += ["--model", str(model_dir), "--workers", "1", "--batch-size", "2"]
        done = subprocess.run(
            [sys.executable, str(PROGRAMS / "peak_rss_of_colorize.py"), *command],
            capture_output=True,
            text=True,
            check=True,
        )
        peaks[count] = int(done.stdout.split()[-1])
        assert (report(tmp_path / f"out{count}").status == "done").sum() == count
    archive_mib = 44 * len(member) / 2**20
    assert peaks[48] - peaks[4] < archive_mib / 2, (peaks, archive_mib)


def test_a_second_run_into_the_same_dst_is_refused_while_the_first_runs(tmp_path, model_dir):
    from filelock import FileLock

    from colorizer.colorize.inputs import LOCK_NAME

    (tmp_path / "src").mkdir()
    Image.fromarray(grey(40, 30)).save(tmp_path / "src" / "a.png")
    (tmp_path / "dst").mkdir()
    with FileLock(tmp_path / "dst" / LOCK_NAME):  # what a running colorize holds
        with pytest.raises(UserError, match="another colorize run is writing here"):
            run(tmp_path / "src", tmp_path / "dst", model_dir)
    run(tmp_path / "src", tmp_path / "dst", model_dir)  # free again: runs
    assert report(tmp_path / "dst").loc["a.png", "status"] == "done"


def test_the_report_can_leave_out_its_run_specific_seconds(tmp_path, model_dir):
    (tmp_path / "src").mkdir()
    Image.fromarray(grey(40, 30)).save(tmp_path / "src" / "a.png")
    run(tmp_path / "src", tmp_path / "dst", model_dir, report_seconds=False)  # as the showcase stage does
    assert (tmp_path / "dst" / REPORT_NAME).read_text().splitlines() == [
        "path,status,reason,width,height",
        "a.png,done,,40,30",
    ]


def test_only_the_runs_own_temp_files_are_swept_and_a_dot_tmp_input_is_an_input(tmp_path, model_dir):
    """The user's `.notes.tmp.txt` (Syncthing, Unison, editors) in DST is not a leftover of ours,
    and an input named `.holiday.tmp.jpg` is colorized and kept, on every run."""
    from colorizer.files import atomic_path

    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / ".holiday.tmp.jpg").write_bytes(encode(Image.fromarray(grey(40, 30)), "JPEG"))
    (dst / "keep").mkdir(parents=True)
    theirs = [dst / ".notes.tmp.txt", dst / "keep" / ".draft.tmp.md", dst / ".syncthing.x.jpg.tmp"]
    for path in theirs:
        path.write_text("mine")
    with atomic_path(dst / "keep" / "ours.jpg") as tmp:  # the name a run that was killed leaves
        ours = tmp.with_name(tmp.name)
        os.link(tmp, ours.with_name(ours.name + ".kept"))
        tmp.write_bytes(b"whole")
    ours = ours.with_name(ours.name + ".kept").rename(ours)  # as if the rename never happened
    for _ in range(2):
        run(src, dst, model_dir)
        assert all(path.read_text() == "mine" for path in theirs)
        assert (dst / ".holiday.tmp.jpg").is_file() and report(dst).loc[".holiday.tmp.jpg", "status"] in (
            "done",
            "skipped",
        )
    assert not ours.exists()
    assert is_temp_name(ours.name) and not any(is_temp_name(path.name) for path in theirs)


def test_two_inputs_for_one_output_are_never_both_done(tmp_path, model_dir):
    """a.jpg and a.png with --format PNG; an archive with ./b.jpg beside b.jpg and d//e.jpg beside
    d/e.jpg: the first in listing order gets the output, the other is failed naming it, on every run."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jpg").write_bytes(encode(Image.fromarray(grey(40, 30, seed=1)), "JPEG"))
    (src / "a.png").write_bytes(encode(Image.fromarray(grey(40, 30, seed=2))))
    for _ in range(2):
        run(src, tmp_path / "dst", model_dir, format="PNG")
        rows = report(tmp_path / "dst")
        assert rows.loc["a.jpg", "status"] in ("done", "skipped")
        assert rows.loc["a.png", "status"] == "failed" and "same output as a.jpg (a.png)" in rows.loc["a.png", "reason"]

    archive = tmp_path / "scans.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name, seed in (("b.jpg", 1), ("./b.jpg", 2), ("d/e.jpg", 3), ("d//e.jpg", 4)):
            zf.writestr(name, encode(Image.fromarray(grey(40, 30, seed=seed)), "JPEG"))
    run(archive, tmp_path / "from-zip", model_dir)
    rows = report(tmp_path / "from-zip")
    assert rows.status.tolist() == ["done", "failed", "done", "failed"]
    assert (
        "same output as b.jpg" in rows.loc["./b.jpg", "reason"]
        and "same output as d/e.jpg" in rows.loc["d//e.jpg", "reason"]
    )


def test_float_and_32_bit_tiffs_are_scaled_by_their_range_or_refused(tmp_path, model_dir):
    """Mode F 0..1 means black..white; 32-bit samples in 0..65535 are 16-bit ones; any other range is
    refused with its values, never written out black or white and called done."""
    src = tmp_path / "src"
    src.mkdir()
    ramp = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (48, 1))
    Image.fromarray(ramp, mode="F").save(src / "float.tif")
    Image.fromarray((ramp * 65535).astype(np.int32), mode="I").save(src / "int32.tif")
    Image.fromarray(ramp * 300, mode="F").save(src / "float-300.tif")
    Image.fromarray((ramp * 70000).astype(np.int32) - 5, mode="I").save(src / "int32-wide.tif")
    run(src, tmp_path / "dst", model_dir)
    rows = report(tmp_path / "dst")
    for name in ("float.tif", "int32.tif"):
        assert rows.loc[name, "status"] == "done"
        L = rgb_to_lab(np.asarray(Image.open(tmp_path / "dst" / name).convert("RGB")))[..., 0]
        assert L[:, :4].mean() < 10 and L[:, -4:].mean() > 90, name  # the ramp from black to white
    assert (
        rows.loc["float-300.tif", "status"] == "failed"
        and "float samples from 0 to 300" in rows.loc["float-300.tif", "reason"]
    )
    assert rows.loc["int32-wide.tif", "status"] == "failed" and "not 0..65535" in rows.loc["int32-wide.tif", "reason"]


def test_a_name_of_255_bytes_can_be_colorized(tmp_path, model_dir):
    src = tmp_path / "src"
    src.mkdir()
    name = "é" * 125 + ".jpg"  # 254 bytes: the longest a file system takes is 255
    (src / name).write_bytes(encode(Image.fromarray(grey(40, 30)), "JPEG"))
    run(src, tmp_path / "dst", model_dir)
    assert report(tmp_path / "dst").loc[name, "status"] == "done" and (tmp_path / "dst" / name).is_file()


def test_a_reader_that_stops_early_or_a_closed_stderr_is_not_a_crash(tmp_path):
    """`colorizer colorize SRC DST --dry-run | head -1` ends quietly; with stderr closed (`2>&-`) a
    run still colorizes."""
    src = tmp_path / "src"
    src.mkdir()
    for seed in range(400):
        (src / f"p{seed:03d}.jpg").write_bytes(b"x")  # listed, never decoded by a dry run
    command = f"{sys.executable} -m colorizer.cli colorize {src} {tmp_path / 'dst'} --dry-run | head -1"
    done = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, timeout=120)
    assert done.stdout.count("\n") == 1 and "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr
    assert done.returncode == 141, done.stderr

    (src / "p000.jpg").write_bytes(encode(Image.fromarray(grey(40, 30)), "JPEG"))
    for path in src.iterdir():
        if path.name != "p000.jpg":
            path.unlink()
    closed = subprocess.run(
        ["bash", "-c", f"{sys.executable} -m colorizer.cli colorize {src} {tmp_path / 'out'} 2>&-"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert closed.returncode == 0 and (tmp_path / "out" / "p000.jpg").is_file()


def test_a_fifo_as_src_is_refused_at_once(tmp_path, model_dir):
    fifo = tmp_path / "scan.jpg"
    os.mkfifo(fifo)
    started = time.monotonic()
    with pytest.raises(UserError, match="not a regular file"):
        run(fifo, tmp_path / "dst", model_dir)
    assert time.monotonic() - started < 5


def test_a_folder_where_the_report_goes_is_said_plainly(tmp_path, model_dir):
    (tmp_path / "dst" / REPORT_NAME).mkdir(parents=True)
    (tmp_path / "src").mkdir()
    with pytest.raises(UserError, match="is a folder, where colorize writes its report; move it away"):
        run(tmp_path / "src", tmp_path / "dst", model_dir)


def test_an_input_whose_output_a_link_in_dst_would_lead_out_is_a_failed_row(tmp_path, model_dir):
    """DST/sub is a link to a folder outside DST: nothing is written there, and sub/x.jpg still has
    its row (failed, with the reason), in the report and in --dry-run."""
    src, dst, outside = tmp_path / "src", tmp_path / "dst", tmp_path / "outside"
    (src / "sub").mkdir(parents=True)
    outside.mkdir()
    dst.mkdir()
    (dst / "sub").symlink_to(outside)
    for name in ("a.jpg", "sub/x.jpg"):
        (src / name).write_bytes(encode(Image.fromarray(grey(40, 30)), "JPEG"))
    from colorizer.colorize.bulk import dry_run

    planned = {relative: (action, detail) for action, relative, detail in dry_run(src, dst, ColorizeOptions())}
    assert planned["sub/x.jpg"][0] == "fail" and "outside DST" in planned["sub/x.jpg"][1]
    run(src, dst, model_dir)
    rows = report(dst)
    assert rows.loc["a.jpg", "status"] == "done"
    assert rows.loc["sub/x.jpg", "status"] == "failed" and "link in DST leads out" in rows.loc["sub/x.jpg", "reason"]
    assert not list(outside.iterdir())


def test_an_all_skipped_rerun_never_loads_the_model(tmp_path, model_dir, capsys):
    import shutil

    from colorizer.training.checkpoints import GENERATOR_FILE

    """A rerun that finds every output written lists, skips and reports without loading the model:
    even weights damaged since the first run go unread (a run with work to do refuses them)."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        Image.fromarray(grey(40, 30, seed=i)).save(src / f"{i}.png")
    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    args = ["colorize", str(src), str(tmp_path / "dst"), "--model", str(model), "--workers", "1", "-v"]
    assert main(args) == 0
    assert "colorize: model at" in capsys.readouterr().err
    data = bytearray((model / GENERATOR_FILE).read_bytes())
    data[len(data) // 2] ^= 0x40
    (model / GENERATOR_FILE).write_bytes(bytes(data))
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "colorize: model at" not in err and "0 done, 3 skipped, 0 failed" in err
    (src / "new.png").write_bytes((src / "0.png").read_bytes())
    assert main(args) == 2  # now there is a photo to colorize: the damaged weights are refused
    assert "sha256 differs" in capsys.readouterr().err and not (tmp_path / "dst" / "new.png").exists()


def test_an_http_src_whose_server_never_answers_ends_with_one_line(tmp_path, monkeypatch, capsys):
    import socket
    import threading

    from tests.helpers import free_port

    port, held = free_port(), []
    listener = socket.create_server(("127.0.0.1", port))
    stop = threading.Event()

    def accept_and_say_nothing():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue

    server = threading.Thread(target=accept_and_say_nothing, daemon=True)
    server.start()
    monkeypatch.setenv("COLORIZER_STORAGE_TIMEOUT", "1")
    started = time.monotonic()
    try:
        assert main(["colorize", f"http://127.0.0.1:{port}/scans.zip", str(tmp_path / "dst"), "--workers", "1"]) == 2
    finally:
        stop.set()
        server.join()
        for connection in held:
            connection.close()
        listener.close()
    assert time.monotonic() - started < 30  # a few 1-second waits, not forever
    [line] = [line for line in capsys.readouterr().err.splitlines() if line.startswith("colorizer colorize:")]
    assert "Timeout" in line and held  # the server was reached, and never answered


def test_sigterm_stops_within_seconds_with_a_worker_blocked_in_a_read(tmp_path):
    """The photo's server sends its headers and a few bytes, then nothing (a hung mount's read): the
    worker reading it can't be interrupted, and the run still stops on SIGTERM, report written, 130."""
    import socket
    import threading

    from tests.helpers import free_port

    port, held = free_port(), []
    listener = socket.create_server(("127.0.0.1", port))
    listener.settimeout(0.2)
    stop = threading.Event()
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\nContent-Type: image/png\r\n\r\n"

    def serve():
        while not stop.is_set():
            try:
                connection = listener.accept()[0]
            except TimeoutError:
                continue
            if connection.recv(4096).startswith(b"HEAD"):
                connection.sendall(head)
                connection.close()
            else:
                connection.sendall(head + b"\x89PNG")
                held.append(connection)

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    run = subprocess.Popen(
        [sys.executable, "-m", "colorizer.cli", "colorize", f"http://127.0.0.1:{port}/a.png", str(tmp_path / "dst")]
        + ["--workers", "1"],
        env=os.environ | {"COLORIZER_STORAGE_TIMEOUT": "600"},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not held and time.monotonic() < deadline:  # the GET hanging
            time.sleep(0.2)
        assert held, "the run never got to read the photo"
        time.sleep(1.0)
        run.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        assert run.wait(timeout=30) == 130
        assert time.monotonic() - signalled < 15  # the workers' grace (5 s) and the report
    finally:
        run.kill()
        stop.set()
        server.join()
        for connection in held:
            connection.close()
        listener.close()
    assert "interrupted" in run.stderr.read()
    assert (tmp_path / "dst" / REPORT_NAME).is_file()


def test_the_plain_paths_colorize_as_the_fast_ones(tmp_path, model_dir):
    """COLORIZER_FAST=0 (the design document's blocks, the generator unfolded, OpenCV's Lab join)
    writes what the fast paths write, to a level of a byte or two, in worker processes too."""
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(grey(150, 110, seed=1)).save(src / "scan.png")
    Image.fromarray(colourful(120, 90, seed=2)).save(src / "colour.png")
    run(src, tmp_path / "fast", model_dir, workers=2, worker_kind="processes")
    with fast.enabled_as(False):
        run(src, tmp_path / "plain", model_dir, workers=2, worker_kind="processes")
    for name in ("scan.png", "colour.png"):
        ours, plain = (np.asarray(Image.open(tmp_path / kind / name), np.int16) for kind in ("fast", "plain"))
        assert ours.shape == plain.shape
        difference = np.abs(ours - plain)
        assert difference.max() <= 3 and difference.mean() < 0.3, (name, difference.max(), difference.mean())
