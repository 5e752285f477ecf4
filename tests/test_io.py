"""Hostile names: no CSV cell a run writes starts a spreadsheet formula, the run reads back the
names exactly, and symlinks out of the data folder are used only when asked."""
from __future__ import annotations

import contextlib
import csv
import io as _stdio
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

import headbench as hb
from headbench import io, progress
from headbench.run import Run
from headbench.synthetic import make_shapes_dataset

FORMULA = ("=", "+", "-", "@", "\t", "\r")
LOOSE = ["-cmd.png", "@x.png", "+y.png", "=HYPERLINK(1).png", "\rcr.png", "'quoted.png"]


# ----------------------------------------------------------------------------------------------
# escape_cell / unescape_cell

@given(st.text())
def test_unescape_undoes_escape_for_any_text(text):
    assert io.unescape_cell(io.escape_cell(text)) == text


@given(st.text())
def test_escaped_text_never_starts_a_formula(text):
    assert not io.escape_cell(text).startswith(FORMULA)


@pytest.mark.parametrize("value", [-0.25, -3, 0.0, 7, 1e-9])
def test_numbers_stay_numbers(value):
    assert io.escape_cell(value) == value


@given(st.lists(st.text(), min_size=1, max_size=5))
def test_csv_file_round_trips_any_text(tmp_path_factory, cells):
    path = tmp_path_factory.mktemp("csv") / "t.csv"
    io.atomic_write_csv(path, [{"a": c, "gap": -0.5} for c in cells], ["a", "gap"])
    assert [row["a"] for row in io.read_csv(path)] == cells
    for row in raw_cells(path):
        assert not row[0].startswith(FORMULA) and row[1] in ("gap", "-0.5")


def test_csv_file_round_trips_file_names_that_are_not_utf8(tmp_path):
    name = os.fsdecode(b"cls/bad\xff.png")
    io.atomic_write_csv(tmp_path / "t.csv", [{"path": name}])
    assert io.read_csv(tmp_path / "t.csv") == [{"path": name}]


def raw_cells(path: Path) -> list[list[str]]:
    """Every row of a CSV file as a spreadsheet would see it (no unescaping)."""
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


# ----------------------------------------------------------------------------------------------
# a real run on a folder with hostile names

@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A compare on a folder with a class named `=1+2`, image files named like formulas, loose
    formula-named files, a link to an image outside the folder and one to an image inside.
    Returns (run, data folder, what the run printed)."""
    tmp = tmp_path_factory.mktemp("hostile")
    data = make_shapes_dataset(tmp / "shapes", classes=("circle", "square"), per_class=8,
                               image_size=48)
    square = data / "=1+2"
    (data / "square").rename(square)
    (data / "manifest.json").unlink()  # it is the user's folder now
    for old, new in zip(sorted(square.iterdir())[:3], ["-cmd.png", "@x.png", "+y.png"]):
        old.rename(square / new)
    for name in LOOSE:  # images outside any class folder: listed in skipped.csv by name
        shutil.copy(square / "-cmd.png", data / name)
    outside = tmp / "elsewhere.png"
    Image.new("RGB", (48, 48), "red").save(outside)
    (data / "circle" / "outside.png").symlink_to(outside)
    (square / "inside.png").symlink_to("../circle/circle_0.png")
    (data / "\x1b[31mred").mkdir()  # a class name that is a terminal escape
    for i in range(4):
        Image.new("RGB", (48, 48), (200 + i, 0, 0)).save(data / "\x1b[31mred" / f"r{i}.png")
    printed = _stdio.StringIO()
    quiet = progress.is_quiet()
    progress.set_quiet(False)
    try:
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            run = hb.compare(data, backbone="resnet18", weights="none", heads=["gap"], seeds=2,
                             epochs=2, input_size=32, precision="fp32", cache_dir=tmp / "cache",
                             out=tmp / "out", report=False)
    finally:
        progress.set_quiet(quiet)
    return run, data, printed.getvalue()


@pytest.mark.parametrize("name", ["predictions.csv", "skipped.csv", "results.csv"])
def test_no_cell_starts_a_formula_unless_it_is_a_number(hostile, name):
    run, _, _ = hostile
    rows = raw_cells(run.run_dir / name)
    assert len(rows) > 1
    for cell in (c for row in rows for c in row):
        if cell.startswith(FORMULA):
            float(cell)  # a negative number, kept a number


def test_formula_names_reach_the_csv_files_escaped(hostile):
    run, _, _ = hostile
    skipped = {row[0] for row in raw_cells(run.run_dir / "skipped.csv")}
    assert {"'-cmd.png", "'@x.png", "'+y.png", "'=HYPERLINK(1).png", "'\rcr.png",
            "''quoted.png"} <= skipped
    predictions = raw_cells(run.run_dir / "predictions.csv")
    header = predictions[0]
    labels = {row[header.index("label")] for row in predictions[1:]}
    assert "'=1+2" in labels and "=1+2" not in labels


def test_run_load_gives_back_the_original_names(hostile):
    run, data, _ = hostile
    loaded = Run.load(run.run_dir)
    assert "=1+2" in loaded.classes and loaded.classes == run.classes
    assert {p for p, _ in loaded.dataset.skipped} >= set(LOOSE)
    assert loaded.dataset.skipped == run.dataset.skipped
    for head, p in loaded.predictions.items():
        assert (p.pred == run.predictions[head].pred).all()
    used = {path for split in loaded.dataset.splits.values() for path in split.paths}
    assert {f"=1+2/{n}" for n in ("-cmd.png", "@x.png", "+y.png")} <= used


def test_negative_numbers_stay_numbers_in_results_csv(tmp_path):
    io.atomic_write_csv(tmp_path / "r.csv", [{"head": "-gap", "overfit_gap": -0.125}])
    header, row = raw_cells(tmp_path / "r.csv")
    assert header == ["head", "overfit_gap"] and row == ["'-gap", "-0.125"]


def test_link_out_of_the_data_folder_is_skipped_listed_and_counted(hostile):
    run, _, printed = hostile
    assert run.dataset.links_outside == 1 and not run.dataset.follow_links
    reasons = dict(run.dataset.skipped)
    assert "--follow-links" in reasons["circle/outside.png"]
    used = {path for split in run.dataset.splits.values() for path in split.paths}
    assert "circle/outside.png" not in used and "=1+2/inside.png" in used
    assert "1 symlinks lead out of the data folder" in printed


def test_terminal_output_of_a_run_escapes_class_names(hostile):
    run, _, printed = hostile
    assert "\x1b[31mred" in run.classes
    assert "\x1b" not in printed and "\\x1b[31mred" in printed


def test_a_lock_held_by_another_process_is_busy_or_waited_for(tmp_path):
    import subprocess
    import sys
    import threading
    import time
    lock_file = tmp_path / "run" / ".lock"  # its folder is created too
    hold = ("import sys\nfrom headbench import io\nwith io.locked(sys.argv[1]):\n"
            "    print('held', flush=True)\n    sys.stdin.read()\n")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(lock_file)], text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(io.Busy), io.locked(lock_file, wait=False):
            pass
        threading.Timer(0.5, holder.stdin.close).start()  # the holder lets go in 0.5 s
        printed, quiet = _stdio.StringIO(), progress.is_quiet()
        progress.set_quiet(False)
        start = time.monotonic()
        try:
            with contextlib.redirect_stdout(printed), io.locked(lock_file, "waiting for it"):
                waited = time.monotonic() - start
        finally:
            progress.set_quiet(quiet)
        assert waited >= 0.4 and printed.getvalue().count("waiting for it") == 1
        assert holder.wait(timeout=60) == 0
    finally:
        holder.kill()
    with pytest.raises(RuntimeError), io.locked(lock_file, wait=False):
        raise RuntimeError("the lock is let go on an error too")
    with io.locked(lock_file, wait=False):
        pass
