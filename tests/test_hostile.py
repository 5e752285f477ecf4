"""A run folder is untrusted input (issue 21): names it gives never become paths outside it, its
damaged fields are one line, and it never chooses where cache folders are made."""
from __future__ import annotations

import csv
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from builders import edit_json

import headbench as hb
from headbench import cli, progress
from headbench.config import CompareConfig
from headbench.errors import HeadbenchError
from headbench.run import Run
from headbench.synthetic import make_shapes_dataset

OPTIONS = dict(backbone="efficientnet_lite0", weights="embedded", heads=["gap"], seeds=1,
               epochs=2, input_size=64, precision="fp32", report=False, shots="none", cam=0)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes",
                               classes=("circle", "square"), per_class=8, image_size=64)


@pytest.fixture(scope="module")
def finished(shapes, cache, tmp_path_factory) -> Path:
    return hb.compare(shapes, cache_dir=cache, out=tmp_path_factory.mktemp("out"),
                      **OPTIONS).run_dir


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "sent" / "run"
    shutil.copytree(run_dir, copy)
    return copy


def _edit_results(run_dir: Path, edit) -> None:
    edit_json(run_dir / "results.json", edit)


def _rename_head_in_predictions(run_dir: Path, old: str, new: str) -> None:
    path = run_dir / "predictions.csv"
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["head"] = new if row["head"] == old else row["head"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_a_head_label_that_leads_out_of_the_run_is_refused_and_nothing_outside_is_touched(
        finished, tmp_path, capsys):
    """Fault 1's reproduction: the label and best_head set to a path, the predictions' head
    column to match; `analyze --cam 1` deleted and wrote files in the victim folder."""
    copy = _copy(finished, tmp_path)
    victim = tmp_path / "victim"
    victim.mkdir()
    for name in ("ok_1.png", "wrong_2.png"):
        (victim / name).write_bytes(b"mine")
    label = "../../../../victim"  # run/analyses/cam/<label> is tmp_path/victim

    def hostile(results):
        results["heads"][0]["head"] = results["best_head"] = label
        results["verdict"]["recommended"] = label
    _edit_results(copy, hostile)
    _rename_head_in_predictions(copy, "gap", label)
    with pytest.raises(HeadbenchError, match=r"heads\[0\]\.head '\.\./\.\./\.\./\.\./victim' "
                                             r"is not a name"):
        hb.analyze(copy, cam=1)
    assert cli.main(["analyze", str(copy), "--cam", "1"]) == 2  # bad input: exit code 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "results.json': heads[0].head" in err[0]
    assert sorted(p.name for p in victim.iterdir()) == ["ok_1.png", "wrong_2.png"]
    assert all(p.read_bytes() == b"mine" for p in victim.iterdir())


@pytest.mark.parametrize("field, value, message", [
    ("model_dir", "../../elsewhere", r"heads\[0\]\.model_dir '\.\./\.\./elsewhere' is not "
                                     r"'heads/gap'"),
    ("best_head", "flatten", r"best_head 'flatten' is not a head of the run"),
])
def test_a_model_folder_or_recommended_head_the_run_does_not_have_is_one_line(
        finished, tmp_path, field, value, message):
    copy = _copy(finished, tmp_path)

    def edit(results):
        if field == "model_dir":
            results["heads"][0]["model_dir"] = value
        else:
            results["best_head"] = value
    _edit_results(copy, edit)
    with pytest.raises(HeadbenchError, match=message):
        Run.load(copy)


def test_damaged_predictions_are_one_line_naming_the_file(finished, tmp_path):
    """Fault 5: a non-integer seed or a missing head column raised a ValueError traceback."""
    copy = _copy(finished, tmp_path)
    path = copy / "predictions.csv"
    text = path.read_text().splitlines()
    seed_column = text[0].split(",").index("seed")
    cells = text[1].split(",")
    cells[seed_column] = "x"
    path.write_text("\n".join([text[0], ",".join(cells)] + text[2:]) + "\n")
    with pytest.raises(HeadbenchError, match=r"predictions\.csv' is damaged"):
        Run.load(copy)
    path.write_text("\n".join(line.replace("head", "kopf", 1) if i == 0 else line
                              for i, line in enumerate(text)) + "\n")
    with pytest.raises(HeadbenchError, match=r"predictions\.csv' is damaged"):
        Run.load(copy)


@pytest.mark.parametrize("name", ["../../escaped_run", "/abs/path", "sub/x", "..", ".x", ""])
def test_a_run_name_is_one_name(shapes, tmp_path, name):
    """Fault 2: `--name` wrote outside --out/runs, and `sub/x` was not found on resume."""
    with pytest.raises(HeadbenchError, match="run name .* is not a name"):
        CompareConfig(str(shapes), out=str(tmp_path / "out"), run_name=name)
    with pytest.raises(HeadbenchError, match="run name .* is not a name"):
        hb.compare(shapes, out=tmp_path / "out", run_name=name, **OPTIONS)
    assert not (tmp_path / "out").exists() and not (tmp_path / "escaped_run").exists()
    assert CompareConfig(str(shapes), run_name="my-run_2.v3").run_name == "my-run_2.v3"


def test_analyze_never_makes_a_cache_folder_where_the_run_says(finished, cache, tmp_path,
                                                              monkeypatch):
    """Fault 1, second half: config.json's cache_dir chose where analyze created cache
    folders. A recorded folder that is not a headbench cache is not used: the default is."""
    copy = _copy(finished, tmp_path)
    nowhere = tmp_path / "nowhere" / "cache"
    edit_json(copy / "config.json", lambda config: config["options"].update(cache_dir=str(nowhere)))
    monkeypatch.setenv("HEADBENCH_CACHE", str(cache))
    run = hb.analyze(copy, cam=1)
    assert "cam" in run.analyses and not (tmp_path / "nowhere").exists()


# ---- fault 4 and 6: sizes have upper bounds, checked before any work or allocation

@pytest.mark.parametrize("options, message", [
    (dict(input_size=100000), "input_size must be a whole number from 32 to 2048"),
    (dict(hidden="100000000000"), "hidden takes .* whole numbers from 1 to 65536"),
    (dict(shifts="100000"), "shifts takes .* whole numbers from 0 to 2048"),
    (dict(sizes="100000"), "sizes takes .* whole numbers from 32 to 2048"),
])
def test_sizes_over_their_limits_are_one_line_before_any_work(shapes, tmp_path, options, message):
    with pytest.raises(HeadbenchError, match=message):
        hb.compare(shapes, out=tmp_path / "out", **{**OPTIONS, **options})
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv", [
    ["params", "--num-classes", "100000000000"],
    ["explain", "--input-size", "100000"],
    ["predict", "MODEL", "IMAGES", "--input-size", "100000"],
    ["analyze", "RUN", "--shifts", "100000"],
])
def test_the_cli_refuses_sizes_over_their_limits(argv, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ("from 2 to 100000" in err[0] or "to 2048" in err[0])


def test_a_head_larger_than_memory_allows_is_refused_before_it_is_built(monkeypatch):
    from headbench import heads
    monkeypatch.setattr(heads, "MEMORY_SHARE", 1e-6)  # any machine: 1e-6 of its memory
    with pytest.raises(HeadbenchError, match=r"head 'gap\[60000\]' would hold .* GiB of "
                                             r"parameters, over 0% of this machine's"):
        heads.create_head("gap", 1280, 10, (7, 7), hidden=[60000])
    assert heads.create_head("gap", 8, 2, (2, 2)).fc.out_features == 2  # small heads still build


def test_an_extraction_larger_than_memory_allows_is_one_line_before_any_image_is_read(
        shapes, tmp_path, monkeypatch):
    from headbench import backbones, features
    monkeypatch.setattr(backbones, "EXTRACTION_SHARE", 1e-6)  # any machine: 1e-6 of its memory
    read = []
    monkeypatch.setattr(features, "_run", lambda *a, **k: read.append(1))
    with pytest.raises(HeadbenchError, match=r"extracting at 64 px would hold about .* GiB for a "
                                             r"batch of 32 images .* use a smaller input size"):
        hb.compare(shapes, cache_dir=tmp_path / "cache", out=tmp_path / "out", **OPTIONS)
    assert not read


def test_the_extraction_estimate_is_of_the_order_of_the_real_activations():
    from headbench import backbones
    bb = backbones.create_backbone("resnet18", weights="none", input_size=64)
    # resnet18's largest activation is the stem's 64 channels at half the input side
    assert bb.activation_bytes(64) == 3 * 4 * 64 * 32 * 32
    assert bb.activation_bytes(128) == 4 * bb.activation_bytes(64)


@pytest.mark.parametrize("field, value, message", [
    ("head", {"name": "gap", "hidden": [100000000], "dropout": 0.0, "options": {}},
     "hidden sizes must be from 1 to 65536"),
    ("data_config.input_size", [3, 100000, 100000], "data_config.input_size"),
    ("num_classes", 100000000, "num_classes"),
])
def test_an_untrusted_model_json_with_huge_sizes_is_refused_before_allocating(
        finished, tmp_path, field, value, message):
    """Fault 6: hidden [100000000] or input_size [3, 100000, 100000] allocated until failing."""
    model = tmp_path / "model"
    shutil.copytree(finished / "heads" / "gap", model)
    def change(meta):
        outer, _, inner = field.partition(".")
        if inner:
            meta[outer][inner] = value
        else:
            meta[outer] = value
    edit_json(model / "model.json", change)
    with pytest.raises(HeadbenchError, match=message):
        hb.load_model(model)


# ---- fault 3: a full disk is one line naming the file, exit code 1, and nothing finished lost

def _full_disk_under(part: str, monkeypatch) -> None:
    """fsync fails with ENOSPC for files whose path contains `part`, as on a full disk."""
    import errno
    import os
    from headbench import io
    fsync = os.fsync

    def full(fd):
        if part in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return fsync(fd)
    monkeypatch.setattr(io.os, "fsync", full)


def test_a_full_disk_while_committing_members_is_one_line_and_the_rerun_resumes(
        shapes, cache, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    _full_disk_under("/members/", monkeypatch)
    argv = ["compare", str(shapes), "--out", str(out), "--cache-dir", str(cache), "--heads",
            "gap", "--seeds", "1", "--epochs", "2", "--input-size", "64", "--no-report",
            "--shots", "none", "--cam", "0", "--weights", "embedded", "--quiet"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "cannot write '" in err[0] and "/members/gap/" in err[0]
    assert "no space left on device" in err[0] and "rerun the same command" in err[0]
    monkeypatch.undo()
    assert cli.main(argv) == 0
    progress.set_quiet(False)  # --quiet is the process's; leave it as other tests expect
    (run_dir,) = (out / "runs").iterdir()
    assert Run.load(run_dir).best_head == "gap"


def test_a_short_write_into_the_cache_is_named_as_a_full_disk(shapes, tmp_path, monkeypatch):
    """numpy's "153600 requested and 28608 written" (an OSError without errno) named no file and
    no cause (exit 2): any such write error is named ENOSPC on a full disk, with its file."""
    import os
    from headbench import io
    from headbench.errors import DiskError
    fsync = os.fsync

    def short(fd):
        if ".npy." in os.readlink(f"/proc/self/fd/{fd}"):  # a chunk's temporary file
            raise OSError("153600 requested and 28608 written")
        return fsync(fd)
    monkeypatch.setattr(io.os, "fsync", short)
    monkeypatch.setattr(io.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(1, 1, 0))
    with pytest.raises(DiskError, match=r"cannot write '.*/chunks/000000\.npy': no space left "
                                        r"on device; extracted features are kept"):
        hb.compare(shapes, cache_dir=tmp_path / "cache", out=tmp_path / "out", **OPTIONS)


def _private_mounts() -> bool:
    """Whether this machine lets a test mount a tmpfs in a private mount namespace."""
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0


@pytest.mark.parametrize("full", ["out", "cache"])
def test_a_really_full_disk_is_one_line_and_exit_code_1(shapes, cache, tmp_path, full):
    """`--out` or `--cache-dir` on a 16 KiB tmpfs (a private mount namespace: nothing outside the
    test sees it): the disk really fills up, and the CLI says so in one line, exit code 1."""
    if not _private_mounts():
        pytest.skip("this machine allows no private mount namespace (unshare -rm)")
    small = tmp_path / "small"
    small.mkdir()
    out = small if full == "out" else tmp_path / "out"
    cache_dir = small if full == "cache" else cache
    argv = [sys.executable, "-m", "headbench", "--quiet", "compare", str(shapes), "--out",
            str(out), "--cache-dir", str(cache_dir), "--heads", "gap", "--seeds", "1",
            "--epochs", "2", "--input-size", "64", "--precision", "fp32", "--no-report",
            "--shots", "none", "--cam", "0", "--weights", "embedded"]
    script = f"mount -t tmpfs -o size=16k tmpfs {shlex.quote(str(small))} && {shlex.join(argv)}"
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True,
                          text=True, timeout=600)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1, done.stderr
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "no space left on device" in lines[0] and str(small) in lines[0]


# ---- fault 9: warnings from libraries are escaped like every other line

def test_a_library_warning_with_control_characters_reaches_the_terminal_escaped(capsys):
    """matplotlib printed "Glyph 27 (\\x1b) missing" with the raw ESC and BEL of a class name."""
    import warnings
    assert cli.main(["params", "--heads", "gap"]) == 0  # the CLI installs the escaping display
    assert warnings.showwarning is progress.show_warning
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = progress.show_warning
        warnings.warn("Glyph 27 (\x1b) missing from ctl\x1b]0;title\x07class", UserWarning)
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err
    assert "Glyph 27 (\\x1b) missing from ctl\\x1b]0;title\\x07class" in err


# ---- fault 5: damaged results.json fields are one line naming the field

@pytest.mark.parametrize("edit, message", [
    (lambda r: r["heads"][0]["seeds"][0].update(test=None), r"heads\[0\]\.seeds\[0\]\.test is "
                                                            r"missing"),
    (lambda r: r["heads"][0].update(best_seed=-1), r"heads\[0\]\.best_seed -1 is not one of its "
                                                   r"seeds \[0\]"),
    (lambda r: r["heads"][0]["summary"]["test_accuracy"].update(mean=float("nan")),
     r"heads\[0\]\.summary\.test_accuracy\.mean is not a number"),
    (lambda r: r["backbone"]["data_config"].update(input_size="x"),
     r"backbone\.data_config\.input_size is invalid"),
])
def test_a_damaged_results_field_is_one_line_when_loaded_and_in_report(
        finished, tmp_path, edit, message, capsys):
    copy = _copy(finished, tmp_path)
    _edit_results(copy, edit)
    with pytest.raises(HeadbenchError, match=message):
        Run.load(copy)
    assert cli.main(["report", str(copy)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "results.json'" in err[0]
