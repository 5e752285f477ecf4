"""Nothing finished is lost: kills, Ctrl-C and disk errors keep committed heads, a rerun resumes."""
from __future__ import annotations

import dataclasses
import errno
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import headbench as hb
from headbench import io as hb_io
from headbench.train import protocol
from headbench.cli import main
from headbench.errors import HeadbenchError
from headbench.run import INCOMPLETE, MEMBERS, Run, is_complete
from headbench.synthetic import make_shapes_dataset

# the heads alone (the default small-data curve trains members of its own)
OPTIONS = dict(backbone="efficientnet_lite0", weights="embedded", heads=["gap", "flatten", "gmp"],
               seeds=2, epochs=3, input_size=64, precision="fp32", report=False, shots="none",
               cam=0)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes",
                               classes=("circle", "square", "star"), per_class=12, image_size=64)


@pytest.fixture(scope="module")
def uninterrupted(shapes, cache, tmp_path_factory) -> Run:
    return hb.compare(shapes, cache_dir=cache, out=tmp_path_factory.mktemp("out"), **OPTIONS)


def _numbers(run: Run) -> dict:
    """Every seed's metrics and best epoch, as one list of numbers per head."""
    return {h.head: [v if v is not None else -1 for s in h.seeds
                     for v in (*dataclasses.astuple(s.train), *dataclasses.astuple(s.val),
                               *dataclasses.astuple(s.test), s.best_epoch)]
            for h in run.heads}


def _same_numbers(a: Run, b: Run) -> bool:
    """The same numbers up to the last bits: stacks of another size may round differently
    (BLAS picks its blocking by shape)."""
    x, y = _numbers(a), _numbers(b)
    return x.keys() == y.keys() and all(x[k] == pytest.approx(y[k], rel=1e-5, abs=1e-6)
                                        for k in x)


def _counting_members(monkeypatch) -> list:
    """Record the training runs (head × decay × seed) `compare` trains."""
    trained = []
    original = protocol.train_members

    def spy(make_heads, members, *args, **kwargs):
        trained.extend(members)
        return original(make_heads, members, *args, **kwargs)
    monkeypatch.setattr(protocol, "train_members", spy)
    return trained


def _kill_after_saves(saves: int, shapes: Path, cache: Path, out: Path) -> None:
    """A compare in a child process, killed (SIGKILL) right after it committed `saves`
    training runs."""
    script = textwrap.dedent(f"""
        import os, signal
        import headbench as hb
        from headbench import run
        original, saved = run.save_member, []
        def save_then_die(*args, **kwargs):
            original(*args, **kwargs)
            saved.append(1)
            if len(saved) == {saves}:
                os.kill(os.getpid(), signal.SIGKILL)
        run.save_member = save_then_die
        hb.compare({str(shapes)!r}, cache_dir={str(cache)!r}, out={str(out)!r}, **{OPTIONS!r})
    """)
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=600)
    assert killed.returncode == -9, killed.stderr


# 3 heads × (4 learning rates at seed 0 + 1 more seed): 12 runs in the sweep pass, 3 in the second
RUNS = 15


def test_sigkill_during_training_then_rerun_trains_only_the_rest(shapes, cache, uninterrupted,
                                                                 tmp_path, monkeypatch):
    out = tmp_path / "out"
    _kill_after_saves(5, shapes, cache, out)  # five training runs committed, the sweep not done
    (run_dir,) = (out / "runs").iterdir()
    assert not is_complete(run_dir)
    assert len(list((run_dir / MEMBERS).glob("*/*.safetensors"))) == 5

    trained = _counting_members(monkeypatch)
    resumed = hb.compare(shapes, cache_dir=cache, out=out, **OPTIONS)
    assert resumed.run_dir == run_dir and is_complete(run_dir)
    assert len(trained) == RUNS - 5 and len(set(trained)) == len(trained)
    assert [h.head for h in resumed.heads] == ["gap", "flatten", "gmp"]
    assert _same_numbers(resumed, uninterrupted)
    assert resumed.best_head == uninterrupted.best_head
    assert _same_numbers(Run.load(run_dir), uninterrupted)
    assert not (run_dir / MEMBERS).exists()  # every head committed: the runs are not kept


def test_a_kill_during_cross_validation_keeps_the_finished_folds(shapes, cache, uninterrupted,
                                                                 tmp_path, monkeypatch):
    """The folds (6 val images: cross-validated) are members like the others: committed as they
    finish, reused by the rerun, with the same selection scores."""
    from headbench.train import folds
    out = tmp_path / "out"
    _kill_after_saves(RUNS + 7, shapes, cache, out)  # every head committed, 7 of 30 folds too
    trained, original = [], folds.train_members

    def spy(make_heads, members, *args, **kwargs):
        trained.extend(members)
        return original(make_heads, members, *args, **kwargs)
    monkeypatch.setattr(folds, "train_members", spy)
    resumed = hb.compare(shapes, cache_dir=cache, out=out, **OPTIONS)
    assert len(trained) == 3 * folds.FOLDS * folds.REPEATS - 7
    assert all(m.fold is not None for m in trained)
    assert resumed.verdict.selection == uninterrupted.verdict.selection == "cv"
    assert resumed.verdict.scores == uninterrupted.verdict.scores
    assert resumed.best_head == uninterrupted.best_head


def test_sigkill_mid_sweep_then_rerun_continues_the_stacks_from_their_checkpoint(
        shapes, cache, uninterrupted, tmp_path, monkeypatch):
    """Killed after the stacks' state of the sweep's second epoch was saved (no member finished
    yet), the rerun trains the sweep's last epoch only and ends with the same numbers."""
    out = tmp_path / "out"
    script = textwrap.dedent(f"""
        import os, signal
        import headbench as hb
        from headbench.train import checkpoint
        checkpoint.EVERY_S = 0.0  # a checkpoint at every epoch end
        original, saved = checkpoint.Checkpoint.save, []
        def save_then_die(self, epoch, stacks, protocol):
            original(self, epoch, stacks, protocol)
            if epoch == 2:
                os.kill(os.getpid(), signal.SIGKILL)
        checkpoint.Checkpoint.save = save_then_die
        hb.compare({str(shapes)!r}, cache_dir={str(cache)!r}, out={str(out)!r}, **{OPTIONS!r})
    """)
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=600)
    assert killed.returncode == -9, killed.stderr
    (run_dir,) = (out / "runs").iterdir()
    assert len(list((run_dir / MEMBERS).glob("stacks-sweep-*.safetensors"))) == 1
    assert not list((run_dir / MEMBERS).glob("*/*.safetensors"))  # no member finished

    starts = []
    original = protocol.train_epoch

    def spy(stacks, blocks, inputs, y, batch_size, step, rate):
        starts.append(step)
        return original(stacks, blocks, inputs, y, batch_size, step, rate)
    monkeypatch.setattr(protocol, "train_epoch", spy)
    resumed = hb.compare(shapes, cache_dir=cache, out=out, **OPTIONS)
    assert starts[0] > 0  # the sweep went on from its third epoch
    assert resumed.run_dir == run_dir and is_complete(run_dir)
    assert _same_numbers(resumed, uninterrupted)
    assert resumed.verdict.scores == pytest.approx(uninterrupted.verdict.scores)
    assert resumed.best_head == uninterrupted.best_head


def test_a_finished_run_is_never_modified_by_a_rerun(shapes, cache, uninterrupted, monkeypatch):
    before = (uninterrupted.run_dir / "results.json").read_bytes()
    trained = _counting_members(monkeypatch)
    again = hb.compare(shapes, cache_dir=cache, out=uninterrupted.run_dir.parent.parent, **OPTIONS)
    assert again.run_dir != uninterrupted.run_dir and len(trained) == RUNS
    assert (uninterrupted.run_dir / "results.json").read_bytes() == before


@pytest.mark.parametrize("code, cause", [(errno.ENOSPC, "no space left on device"),
                                         (errno.EROFS, "read-only file system")])
def test_a_disk_error_is_one_line_that_says_what_was_kept_and_a_rerun_resumes(
        shapes, cache, uninterrupted, tmp_path, monkeypatch, code, cause):
    original, commits = hb_io.atomic_write, []

    def failing(path, write):
        if Path(path).name == "results.json":
            commits.append(path)
            if len(commits) == 2:  # the second head's commit
                raise OSError(code, "injected", str(path))
        return original(path, write)
    monkeypatch.setattr(hb_io, "atomic_write", failing)
    with pytest.raises(HeadbenchError) as e:
        hb.compare(shapes, cache_dir=cache, out=tmp_path, **OPTIONS)
    message = str(e.value)
    assert "\n" not in message and cause in message and "results.json" in message
    assert "finished heads gap are kept" in message and "rerun the same command" in message

    monkeypatch.setattr(hb_io, "atomic_write", original)
    (run_dir,) = (tmp_path / "runs").iterdir()
    saved = len(list((run_dir / MEMBERS).glob("*/*.safetensors")))
    trained = _counting_members(monkeypatch)
    resumed = hb.compare(shapes, cache_dir=cache, out=tmp_path, **OPTIONS)
    # only the training runs not committed before the failure are trained again
    assert len(trained) == RUNS - saved < RUNS // 2
    assert _same_numbers(resumed, uninterrupted)


def test_the_cli_turns_a_disk_error_into_one_line_and_exit_code(shapes, cache, tmp_path,
                                                                monkeypatch, capsys):
    def full(path, write):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    monkeypatch.setattr(hb_io, "atomic_write", full)
    code = main(["compare", str(shapes), "--cache-dir", str(cache), "--out", str(tmp_path),
                 "--heads", "gap", "--seeds", "1", "--epochs", "1", "--input-size", "64",
                 "--precision", "fp32", "--no-report"])
    err = capsys.readouterr().err
    assert code != 0 and err.count("\n") == 1 and "no space left on device" in err
    assert "Traceback" not in err


def test_ctrl_c_keeps_finished_training_runs_and_the_rerun_resumes(shapes, cache, uninterrupted,
                                                                   tmp_path, monkeypatch):
    original, calls = protocol.train_members, []

    def interrupt_second_pass(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the sweep is done and committed
            raise KeyboardInterrupt
        return original(*args, **kwargs)
    monkeypatch.setattr(protocol, "train_members", interrupt_second_pass)
    with pytest.raises(KeyboardInterrupt):
        hb.compare(shapes, cache_dir=cache, out=tmp_path, **OPTIONS)
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert (run_dir / INCOMPLETE).exists()
    assert len(list((run_dir / MEMBERS).glob("*/*.safetensors"))) == 12
    monkeypatch.setattr(protocol, "train_members", original)
    trained = _counting_members(monkeypatch)
    assert _same_numbers(hb.compare(shapes, cache_dir=cache, out=tmp_path, **OPTIONS),
                         uninterrupted)
    assert len(trained) == RUNS - 12


def test_analyze_refuses_an_incomplete_run(shapes, cache, uninterrupted, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(uninterrupted.run_dir, partial)
    (partial / INCOMPLETE).write_text("x\n")
    with pytest.raises(HeadbenchError, match="is incomplete"):
        hb.analyze(partial, shifts="0,8")


def test_two_concurrent_analyze_runs_keep_both_sections(uninterrupted, cache):
    run_dir = str(uninterrupted.run_dir)
    base = [sys.executable, "-m", "headbench", "--quiet", "analyze", run_dir, "--cache-dir",
            str(cache)]
    procs = [subprocess.Popen(base + extra, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
             for extra in (["--shifts", "0,8"], ["--sizes", "64,96"])]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    analyses = Run.load(run_dir).analyses
    assert {"shifts", "sizes"} <= set(analyses)
    assert json.loads((Path(run_dir) / "results.json").read_text())["analyses"].keys() >= {
        "shifts", "sizes"}


def _can_bind_mount_read_only(folder: Path) -> bool:
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                            f"mount --bind {folder} {folder} && "
                            f"mount -o remount,bind,ro {folder} {folder} && "
                            f"! touch {folder}/probe 2>/dev/null"],
                           capture_output=True)
    return probe.returncode == 0


def test_a_read_only_out_folder_fails_before_any_work(shapes, cache, tmp_path):
    out = tmp_path / "ro"
    out.mkdir()
    if shutil.which("unshare") is None or not _can_bind_mount_read_only(out):
        pytest.skip("no private mount namespace here (needs unshare and mount rights) to make "
                    "a real read-only folder; the injected EROFS test covers the writing layer")
    command = (f"mount --bind {out} {out} && mount -o remount,bind,ro {out} {out} && "
               f"{sys.executable} -m headbench compare {shapes} --out {out} --cache-dir {cache} "
               "--heads gap --seeds 1 --epochs 1 --input-size 64 --precision fp32 --no-report")
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", command],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: --out") and "Read-only file system" in done.stderr
    assert done.stderr.count("\n") == 1
