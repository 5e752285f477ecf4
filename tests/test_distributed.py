"""torchrun with 2 gloo processes on CPU: sharded extraction and DDP fine-tuning against one process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from headbench import distributed
from headbench.data import scan_folder
from headbench.errors import HeadbenchError
from headbench.synthetic import make_shapes_dataset

COMMON = ["--backbone", "efficientnet_lite0", "--weights", "embedded", "--input-size", "64",
          "--heads", "gap", "--seeds", "1", "--epochs", "2", "--weight-decays", "1e-3",
          "--precision", "fp32", "--no-report", "--quiet"]
FINETUNE = ["--finetune", "--finetune-epochs", "1", "--finetune-batch-size", "8"]

# One fine-tuning epoch from a seeded start; rank 0 (or the single process) saves the weights.
WORKER = textwrap.dedent("""
    import sys
    from pathlib import Path
    import numpy as np, torch
    from safetensors.torch import save_file
    from headbench import distributed, finetune as ft
    from headbench.backbones import create_backbone
    from headbench.data import scan_folder
    from headbench.heads import create_head
    from headbench.model import HeadbenchModel
    from headbench.train import seeded

    data, out = Path(sys.argv[1]), Path(sys.argv[2])
    torch.set_num_threads(1)
    distributed.init()
    items = scan_folder(data).items
    def split(keep):
        chosen = [it for i, it in enumerate(items) if keep(i)]
        return ft.Images([it.path for it in chosen], [it.digest for it in chosen],
                         np.array([it.label for it in chosen]))
    train, val = split(lambda i: i % 4), split(lambda i: not i % 4)
    backbone = create_backbone("efficientnet_lite0", "embedded", 64)
    c, h, w = backbone.feature_shape()
    with seeded(0):
        head = create_head("gap", c, 3, (h, w))
    model = HeadbenchModel(backbone, head, freeze=False)
    if distributed.is_main():
        save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                  str(out.with_suffix(".start")))
    config = ft.FinetuneConfig(epochs=1, batch_size=8, patience=None, bn="frozen")
    result = ft.finetune(model, train, val, config, 1e-3, out.with_suffix(".pt"),
                         device=torch.device("cpu"), precision="fp32")
    Path(f"{out}.rank{distributed.rank()}").write_text(str(distributed.world()))
    if distributed.is_main():
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out))
        out.with_suffix(".json").write_text(str(result.history[0].val_loss))
""")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes",
                               classes=("circle", "square", "star"), per_class=10, image_size=64)


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", HEADBENCH_DIST_TIMEOUT_H="0.2")


def _torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           *args]
    done = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _chunks(cache: Path) -> tuple[dict[str, float], list[str], np.ndarray]:
    """(chunk file -> mtime, digests in chunk order, rows) of the one entry of `cache`."""
    (entry,) = [p for p in cache.iterdir() if p.is_dir()]
    files = sorted((entry / "chunks").glob("*.json"))
    digests, rows = [], []
    for f in files:
        digests += json.loads(f.read_text())["digests"]
        rows.append(np.load(f.with_suffix(".npy")))
    mtimes = {p.name: p.stat().st_mtime_ns for p in (entry / "chunks").iterdir()}
    return mtimes, digests, np.concatenate(rows)


@pytest.fixture(scope="module")
def runs(shapes, tmp_path_factory) -> dict:
    """One compare in one process, the same under torchrun with 2 ranks, then a second
    torchrun compare (other options) on the same cache."""
    tmp = tmp_path_factory.mktemp("dist")
    single = subprocess.run([sys.executable, "-m", "headbench", "compare", str(shapes), *COMMON,
                             *FINETUNE, "--cache-dir", str(tmp / "c1"), "--out", str(tmp / "o1")],
                            env=_env(), capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    _torchrun("-m", "headbench", "compare", str(shapes), *COMMON, *FINETUNE,
              "--cache-dir", str(tmp / "c2"), "--out", str(tmp / "o2"), cwd=tmp)
    before = _chunks(tmp / "c2")
    _torchrun("-m", "headbench", "compare", str(shapes), *COMMON, "--epochs", "1",
              "--cache-dir", str(tmp / "c2"), "--out", str(tmp / "o3"), cwd=tmp)
    return dict(tmp=tmp, single=_chunks(tmp / "c1"), dist=before, again=_chunks(tmp / "c2"))


def _results(out: Path) -> dict:
    (run_dir,) = list((out / "runs").iterdir())
    return json.loads((run_dir / "results.json").read_text())


def test_ranks_extract_disjoint_parts_into_one_cache_entry(runs, shapes):
    mtimes, digests, _ = runs["dist"]
    images = {it.digest for it in scan_folder(shapes).items}
    assert sorted(digests) == sorted(images)  # every image once: none twice, none missing
    numbers = {int(name[:6]) % 2 for name in mtimes if name.endswith(".json")}
    assert numbers == {0, 1}  # both ranks wrote chunks (rank r writes numbers r, r+2, ...)


def test_sharded_features_equal_one_process(runs):
    _, d1, x1 = runs["single"]
    _, d2, x2 = runs["dist"]
    x2 = x2[[d2.index(d) for d in d1]]
    np.testing.assert_allclose(x2.astype(np.float32), x1.astype(np.float32), atol=2e-2, rtol=1e-2)


def test_a_second_distributed_run_extracts_nothing(runs):
    assert runs["again"][0] == runs["dist"][0]  # the same chunk files, untouched
    assert _results(runs["tmp"] / "o3")["timing"]["n_extracted"] == 0


def test_rank_0_writes_the_one_run_folder_with_the_finetuned_head(runs):
    heads = [h["head"] for h in _results(runs["tmp"] / "o2")["heads"]]
    assert heads == ["gap", "gap+ft"]
    assert len(list((runs["tmp"] / "o2" / "runs").iterdir())) == 1


def test_one_ddp_epoch_gives_the_single_process_weights(shapes, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    single = subprocess.run([sys.executable, str(script), str(shapes), str(tmp_path / "one.st")],
                            env=_env(), capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    _torchrun(str(script), str(shapes), str(tmp_path / "two.st"), cwd=tmp_path)
    assert [(tmp_path / f"two.st.rank{r}").read_text() for r in (0, 1)] == ["2", "2"]
    one, two = load_file(str(tmp_path / "one.st")), load_file(str(tmp_path / "two.st"))
    start = load_file(str(tmp_path / "one.start"))
    assert one.keys() == two.keys() == start.keys()
    for name in one:
        np.testing.assert_allclose(two[name], one[name], atol=1e-5, rtol=0, err_msg=name)
    trained = [n for n in one if not np.array_equal(one[n], start[n])]
    assert any(n.startswith("backbone.") for n in trained) and any(n.startswith("head.") for n in trained)
    frozen_bn = [n for n in one if "running_mean" in n]
    assert frozen_bn and all(np.array_equal(two[n], start[n]) for n in frozen_bn)
    val = [float((tmp_path / f"{n}.json").read_text()) for n in ("one", "two")]
    assert val[0] == pytest.approx(val[1], abs=1e-5)  # val counted each image once


def test_other_commands_refuse_several_processes(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(HeadbenchError, match="only 'compare' runs under torchrun"):
        distributed.refuse("analyze")
