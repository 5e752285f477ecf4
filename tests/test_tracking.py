"""A run logged to MLflow and TensorBoard, read back with their own readers (no mocks).

One small compare on generated shapes logs to both trackers (local backends: a SQLite MLflow
store and TensorBoard event files in the run's output folder); `headbench log` logs the same
finished run again elsewhere. Tests that need a tracker skip, with the reason, only when its
package cannot be imported.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import sys
from pathlib import Path

import pytest

import headbench as hb
from headbench import cli, tracking
from headbench.config import CompareConfig
from headbench.errors import HeadbenchError
from headbench.synthetic import make_shapes_dataset

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"  # the suite sends nothing anywhere

HAS = {name: importlib.util.find_spec(name) is not None for name in ("mlflow", "tensorboard")}
needs_mlflow = pytest.mark.skipif(not HAS["mlflow"], reason="mlflow cannot be imported "
                                  "(pip install 'headbench[mlflow]')")
needs_tensorboard = pytest.mark.skipif(not HAS["tensorboard"], reason="tensorboard cannot be "
                                       "imported (pip install 'headbench[tensorboard]')")
FAST = dict(backbone="resnet18", weights="none", input_size=64, heads="gap,flatten", seeds=2,
            epochs=2, shots="none", cam=0, workers=0)


@pytest.fixture(autouse=True)
def no_tracker_environment(monkeypatch):
    """The trackers' own settings of the machine running the tests are not the tests'."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_ALLOW_FILE_STORE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes",
                               classes=("circle", "square", "star"), per_class=8, image_size=64)


@pytest.fixture(scope="module")
def logged(data, tmp_path_factory, one_thread):
    """A finished compare logged to both trackers at their defaults."""
    if not (HAS["mlflow"] and HAS["tensorboard"]):
        pytest.skip("mlflow and tensorboard are needed (pip install 'headbench[test]')")
    out = tmp_path_factory.mktemp("out")
    with pytest.MonkeyPatch.context() as mp:
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
            mp.delenv(name, raising=False)
        run = hb.compare(data, **FAST, report=True, log="mlflow,tensorboard", out=out,
                         cache_dir=out / "cache")
    return run


def mlflow_run(uri: str, experiment: str = tracking.EXPERIMENT):
    """The one MLflow run of `experiment` in the store at `uri`, and the client."""
    from mlflow.tracking import MlflowClient
    client = MlflowClient(uri)
    found = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(found) == 1
    return client, found[0]


def events(logdir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    accumulator = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def text_of(accumulator, tag: str) -> str:
    return accumulator.Tensors(f"{tag}/text_summary")[0].tensor_proto.string_val[0].decode()


# ----------------------------------------------------------------------------------------------
# the option

def test_targets_are_a_comma_list_or_repeated_each_once(tmp_path):
    assert tracking.parse_targets("mlflow, tensorboard") == ("mlflow", "tensorboard")
    assert tracking.parse_targets(["mlflow=sqlite:///x.db,tensorboard", "MLflow=sqlite:///x.db"]) \
        == ("mlflow=sqlite:///x.db", "tensorboard")
    assert tracking.parse_targets([f"tensorboard={tmp_path}/tb/../tb"]) == (
        f"tensorboard={tmp_path.resolve() / 'tb'}",)
    assert tracking.parse_targets(()) == () == CompareConfig("images").log


def test_an_unknown_tracker_or_an_empty_uri_is_one_line_naming_the_option():
    with pytest.raises(HeadbenchError, match="unknown tracker 'wandb'.*valid: mlflow, "
                                             "tensorboard") as e:
        CompareConfig("images", log="wandb")
    assert e.value.param == "log"
    with pytest.raises(HeadbenchError, match="nothing after '='; give mlflow=URI") as e:
        CompareConfig("images", log="mlflow=")
    assert e.value.param == "log"


def test_where_a_run_is_logged_does_not_change_what_it_resumes():
    assert CompareConfig("images", log="mlflow").digest() == CompareConfig("images").digest()


def test_log_is_repeatable_on_the_command_line(data, monkeypatch, tmp_path):
    seen = []

    def fake_compare(config):
        seen.append(config)
        raise HeadbenchError("stopped by the test")

    monkeypatch.setattr(importlib.import_module("headbench.compare"), "compare", fake_compare)
    assert cli.main(["compare", str(data), "--log", "mlflow", "--log",
                     f"tensorboard={tmp_path},mlflow"]) == 2
    assert seen[0].log == ("mlflow", f"tensorboard={tmp_path.resolve()}")


def test_the_log_command_shows_its_defaults(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit):
        cli.main(["log", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--to TRACKER mlflow[=URI] | tensorboard[=DIR]" in text
    assert "sqlite:///<out>/mlflow.db" in text and "<out>/tensorboard" in text


# ----------------------------------------------------------------------------------------------
# a missing package: one line, before any work

@pytest.mark.parametrize("name", ["mlflow", "tensorboard"])
def test_a_missing_tracker_package_is_one_line_before_any_work(name, data, tmp_path,
                                                               monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    with pytest.raises(HeadbenchError) as e:
        hb.compare(data, **FAST, log=name, out=tmp_path / "out", cache_dir=tmp_path / "cache")
    assert str(e.value) == f"logging to {name} needs the {name} package: pip install " \
                           f"'headbench[{name}]'"
    assert e.value.param == "log"
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()
    assert cli.main(["compare", str(data), "--log", name, "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == f"error: --log: logging to {name} needs the {name} " \
                                      f"package: pip install 'headbench[{name}]'\n"
    assert not (tmp_path / "out").exists()


def test_the_log_command_names_the_missing_extra(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    assert cli.main(["log", str(tmp_path), "--to", "tensorboard"]) == 2
    assert capsys.readouterr().err == "error: --to: logging to tensorboard needs the " \
                                      "tensorboard package: pip install " \
                                      "'headbench[tensorboard]'\n"


# ----------------------------------------------------------------------------------------------
# MLflow

@needs_mlflow
def test_compare_logs_params_metrics_verdict_and_curves_to_mlflow(logged):
    out = logged.run_dir.parent.parent
    client, found = mlflow_run(f"sqlite:///{out / 'mlflow.db'}")
    assert found.info.run_name == logged.run_dir.name and found.info.status == "FINISHED"
    params, metrics, tags = found.data.params, found.data.metrics, found.data.tags
    assert params["heads"] == "gap,flatten" and params["seeds"] == "2"
    assert params["backbone"] == "resnet18" and params["recommended_head"] == logged.best_head
    assert "log" not in params
    gap = logged.head("gap").summary.test_accuracy
    assert metrics["gap/test_accuracy"] == pytest.approx(gap.mean)
    assert metrics["gap/test_accuracy_ci_low"] == pytest.approx(gap.lo)
    assert metrics["gap/test_accuracy_ci_high"] == pytest.approx(gap.hi)
    assert metrics["flatten/head_params"] == logged.head("flatten").head_params
    assert metrics["gap/latency_ms_b1"] == pytest.approx(logged.head("gap").latency_ms_b1)
    assert "gap/selection_score" in metrics
    best = logged.head(logged.best_head)
    assert metrics["recommended/test_accuracy"] == pytest.approx(best.summary.test_accuracy.mean)
    assert tags["headbench.verdict"] == logged.verdict.text == tags["mlflow.note.content"]
    assert tags["headbench.recommended"] == logged.best_head
    # the learning curve of the best seed, one step per epoch
    seed = next(s for s in logged.head("gap").seeds if s.seed == logged.head("gap").best_seed)
    curve = client.get_metric_history(found.info.run_id, "gap/epoch/val_loss")
    curve = sorted((m.step, m.value) for m in curve)
    assert [step for step, _ in curve] == [e.epoch for e in seed.history]
    assert [value for _, value in curve] == pytest.approx([e.val_loss for e in seed.history])


@needs_mlflow
def test_mlflow_keeps_the_report_and_the_recommended_model_beside_its_database(logged, data,
                                                                             tmp_path):
    out = logged.run_dir.parent.parent
    client, found = mlflow_run(f"sqlite:///{out / 'mlflow.db'}")
    run_id = found.info.run_id
    assert found.info.artifact_uri.startswith((out / "mlartifacts").resolve().as_uri())
    top = {a.path for a in client.list_artifacts(run_id)}
    assert {"report.html", "results.json", "config.json", "model"} <= top
    assert {"model/model.json", "model/model.safetensors"} <= {
        a.path for a in client.list_artifacts(run_id, "model")}
    model_dir = client.download_artifacts(run_id, "model", str(tmp_path))
    model = hb.load_model(model_dir)  # the artifact alone is a model
    (row,) = hb.predict(model, [next(data.glob("circle/*.png"))], topk=1)
    assert row["top"][0]["label"] in logged.classes


@needs_mlflow
def test_the_model_artifact_carries_a_backbone_from_a_local_weights_file(data, tmp_path,
                                                                         one_thread):
    import timm
    from safetensors.torch import save_file
    weights = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model("resnet18").state_dict().items()},
              str(weights))
    run = hb.compare(data, **dict(FAST, weights=str(weights), heads="gap", seeds=1, epochs=1),
                     report=False, log="mlflow", out=tmp_path, cache_dir=tmp_path / "cache")
    client, found = mlflow_run(f"sqlite:///{tmp_path / 'mlflow.db'}")
    model_dir = Path(client.download_artifacts(found.info.run_id, "model", str(tmp_path / "dl")))
    assert (model_dir / "backbone.safetensors").is_file()  # in the run folder: beside heads/
    (row,) = hb.predict(hb.load_model(model_dir), [next(data.glob("star/*.png"))], topk=1)
    assert row["top"][0]["label"] in run.classes


# ----------------------------------------------------------------------------------------------
# TensorBoard

@needs_tensorboard
def test_compare_writes_scalars_curves_and_texts_for_tensorboard(logged):
    logdir = logged.run_dir.parent.parent / "tensorboard" / logged.run_dir.name
    board = events(logdir)
    scalars = board.Tags()["scalars"]
    (value,) = board.Scalars("gap/test_accuracy")
    assert value.value == pytest.approx(logged.head("gap").summary.test_accuracy.mean)
    assert "gap/test_accuracy_ci_low" in scalars and "flatten/head_params" in scalars
    seed = next(s for s in logged.head("gap").seeds if s.seed == logged.head("gap").best_seed)
    assert [e.step for e in board.Scalars("gap/epoch/train_loss")] == [
        e.epoch for e in seed.history]
    assert text_of(board, "verdict") == logged.verdict.text
    assert text_of(board, "recommended") == logged.best_head
    heads = text_of(board, "heads")
    assert "| gap" in heads and "| flatten" in heads and "(recommended)" in heads


# ----------------------------------------------------------------------------------------------
# headbench log: a finished run, later

@needs_mlflow
@needs_tensorboard
def test_headbench_log_logs_a_finished_run_again(logged, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'team.db'}"
    argv = ["log", str(logged.run_dir), "--to", f"mlflow={uri}", "--to",
            f"tensorboard={tmp_path / 'tb'}"]
    assert cli.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("logged to mlflow: run ") and uri in lines[0]
    assert lines[1].startswith(f"logged to tensorboard: {tmp_path / 'tb' / logged.run_dir.name}")
    _, found = mlflow_run(uri)
    assert found.data.metrics["gap/test_accuracy"] == pytest.approx(
        logged.head("gap").summary.test_accuracy.mean)
    assert found.data.tags["headbench.verdict"] == logged.verdict.text
    assert events(tmp_path / "tb" / logged.run_dir.name).Scalars("gap/test_accuracy")
    # logged twice to the same folder: a second TensorBoard run beside the first
    assert cli.main(["log", str(logged.run_dir), "--to", f"tensorboard={tmp_path / 'tb'}"]) == 0
    assert (tmp_path / "tb" / f"{logged.run_dir.name}-2").is_dir()


@needs_mlflow
def test_a_new_mlflow_store_is_created_without_mlflows_info_lines(logged, tmp_path, capfd):
    uri = f"sqlite:///{tmp_path / 'new.db'}"
    assert cli.main(["log", str(logged.run_dir), "--to", f"mlflow={uri}", "--quiet"]) == 0
    out, err = capfd.readouterr()
    assert "database tables" not in out + err and " INFO " not in out + err
    assert out.startswith("logged to mlflow: run ")


@needs_mlflow
def test_a_tracker_that_refuses_is_one_line_and_compare_only_warns(logged, tmp_path, capsys):
    refused = tmp_path / "plain-folder"  # MLflow 3 refuses a file store unless told
    assert cli.main(["log", str(logged.run_dir), "--to", f"mlflow={refused}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: mlflow could not log the run '{logged.run_dir}' (")
    assert len(err.strip().splitlines()) == 1
    run = hb.Run.load(logged.run_dir)
    run.options.log = (f"mlflow={refused}",)
    tracking.log_finished(run)  # what compare does once the run is complete
    err = capsys.readouterr().err
    assert err.startswith("warning: mlflow could not log the run") and len(
        err.strip().splitlines()) == 1
    assert f"log it again with headbench log {run.run_dir}" in err


@needs_tensorboard
def test_headbench_log_refuses_an_incomplete_run_and_a_folder_that_is_no_run(logged, tmp_path,
                                                                           capsys):
    copy = shutil.copytree(logged.run_dir, tmp_path / "runs" / "copy")
    (copy / ".incomplete").write_text("digest\n")
    assert cli.main(["log", str(copy), "--to", "tensorboard"]) == 2
    assert "is incomplete" in capsys.readouterr().err
    assert cli.main(["log", str(tmp_path / "nothing"), "--to", "tensorboard"]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert not (tmp_path / "tensorboard").exists()
