"""Small data: the shots section keeps per-image correctness, so findings can test it per image.

The run is built in memory on random class-shifted feature maps (no backbone, no images):
gap and flatten on a 4-channel 2×2 map, 3 classes, 2 seeds.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from headbench.analyses.context import RunContext
from headbench.analyses.shots import shots_analysis
from headbench.config import CompareConfig
from headbench.heads import create_head
from headbench.results import BackboneInfo, DatasetInfo, HeadResult, SplitItems
from headbench.run import Run
from headbench.train import TrainConfig, seeded

from builders import placeholder_head

C, CLASSES, SEEDS = 4, 3, [0, 1]
SIZES = {"train": 12, "val": 6, "test": 9}


def _head_result(label: str) -> HeadResult:
    return placeholder_head(label, SEEDS, 1)


@pytest.fixture(scope="module")
def ctx() -> RunContext:
    rng = np.random.default_rng(0)
    splits, features = {}, {}
    for role, n in SIZES.items():
        labels = np.arange(n) % CLASSES
        splits[role] = SplitItems([f"{role}/{i}.png" for i in range(n)], labels, ["0"] * n)
        X = rng.standard_normal((n, C, 2, 2)).astype(np.float32)
        X[np.arange(n), labels] += 2.0  # a learnable class signal in one channel
        features[role] = X
    dataset = DatasetInfo(root="/nonexistent", name="x", layout="class folders",
                          classes=[f"c{i}" for i in range(CLASSES)], split_description="",
                          counts={}, leakage=[], skipped=[], splits=splits)
    backbone = BackboneInfo("resnet18", "resnet18", "none", None, {}, [C, 2, 2], 0, 0, 0.0, 0.0)
    run = Run(options=CompareConfig("x"), dataset=dataset, backbone=backbone, precision="fp32",
              device="cpu", machine={}, heads=[_head_result("gap"), _head_result("flatten")],
              train_config=TrainConfig(epochs=3, batch_size=4, weight_decays=(1e-3,),
                                       device="cpu"))
    states = {}
    for label in ("gap", "flatten"):
        states[label] = {}
        for seed in SEEDS:
            with seeded(seed):
                states[label][seed] = create_head(label, C, CLASSES, (2, 2)).state_dict()
    return RunContext(run=run, backbone=None, states=states, features=features,
                      device=torch.device("cpu"))


def test_shots_section_keeps_per_image_correctness_averaged_over_seeds(ctx):
    out = shots_analysis(ctx, [1, "all"])
    for label in ("gap", "flatten"):
        for k in ("1", "all"):
            cell = out["heads"][label][k]
            per_image = cell["per_image"]["test_accuracy"]
            assert len(per_image) == SIZES["test"]
            assert set(per_image) <= {0.0, 0.5, 1.0}  # 2 seeds
            assert np.mean(per_image) == pytest.approx(cell["test_accuracy"]["mean"])
    # 'all' reuses the run's own heads: per image, what those heads predict
    head = ctx.make_head("gap", 0)
    with torch.no_grad():
        pred0 = head(torch.from_numpy(ctx.features["test"])).argmax(1).numpy()
    right0 = pred0 == ctx.labels("test")
    per_image = np.array(out["heads"]["gap"]["all"]["per_image"]["test_accuracy"])
    assert (per_image[right0] >= 0.5).all() and (per_image[~right0] <= 0.5).all()
