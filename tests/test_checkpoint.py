"""Checkpoints of stacked training: a fit stopped at an epoch end and rerun continues from its
saved state and ends with the numbers of an uninterrupted fit; a file that does not fit is
ignored."""
from __future__ import annotations

import pytest

from headbench.train import Member, TrainConfig, checkpoint, train_members
from headbench.train.checkpoint import Checkpoint

from test_stacked import assert_same_result, makers, separable

CONFIG = TrainConfig(epochs=7, batch_size=16, lr=(1e-3, 1e-2, 5e-2), warmup_epochs=1, patience=2,
                     halving=4, device="cpu")
# gap and fastai (BatchNorm buffers, dropout streams), a sweep at seed 0 and one more seed
MEMBERS = [Member(label, 1e-2, 0, lr) for label in ("gap", "fastai") for lr in CONFIG.lr] + [
    Member(label, 1e-2, 1, 1e-2) for label in ("gap", "fastai")]


@pytest.fixture(scope="module")
def data():
    return (*separable(90, 1), *separable(40, 2))


@pytest.fixture(scope="module")
def uninterrupted(data):
    return train_members(makers(["gap", "fastai"]), MEMBERS, *data, CONFIG)


class Stop(Exception):
    pass


def _stopped_after(saves: int, data, path, monkeypatch) -> dict:
    """A fit stopped right after its `saves`-th checkpoint; the members it finished."""
    monkeypatch.setattr(checkpoint, "EVERY_S", 0.0)
    original, count = Checkpoint.save, []

    def save_then_stop(self, epoch, stacks, protocol):
        original(self, epoch, stacks, protocol)
        count.append(epoch)
        if len(count) == saves:
            raise Stop
    monkeypatch.setattr(Checkpoint, "save", save_then_stop)
    finished = {}
    with pytest.raises(Stop):
        train_members(makers(["gap", "fastai"]), MEMBERS, *data, CONFIG,
                      on_done=lambda m, r: finished.__setitem__(m, r),
                      checkpoint=Checkpoint(path, tag="features"))
    monkeypatch.setattr(Checkpoint, "save", original)
    return finished


@pytest.mark.parametrize("saves", [2, 5])  # before the halving at epoch 4, and after it
def test_a_rerun_continues_from_the_checkpoint_with_the_uninterrupted_numbers(
        data, uninterrupted, tmp_path, monkeypatch, saves):
    path = tmp_path / "stacks.safetensors"
    finished = _stopped_after(saves, data, path, monkeypatch)
    assert path.is_file()
    epochs = []
    monkeypatch.setattr("headbench.train.protocol.train_epoch", _spy(epochs))
    todo = [m for m in MEMBERS if m not in finished]
    resumed = train_members(makers(["gap", "fastai"]), todo, *data, CONFIG, known=finished,
                            checkpoint=Checkpoint(path, tag="features"))
    assert epochs[0] == saves + 1  # from the epoch after the checkpoint, not from the start
    assert set(resumed) == set(todo)
    for member, result in {**finished, **resumed}.items():
        assert_same_result(result, uninterrupted[member])
    assert not path.exists()  # done: the state is dropped


def _spy(epochs: list):
    from headbench.train import protocol
    original = protocol.train_epoch

    def spy(stacks, blocks, inputs, y, batch_size, step, rate):
        steps = -(-90 // CONFIG.batch_size)
        epochs.append(step // steps + 1)
        return original(stacks, blocks, inputs, y, batch_size, step, rate)
    return spy


@pytest.mark.parametrize("damage", ["truncated", "other features", "other members",
                                    "other protocol"])
def test_a_checkpoint_that_does_not_fit_is_ignored(data, uninterrupted, tmp_path, monkeypatch,
                                                    damage):
    path = tmp_path / "stacks.safetensors"
    finished = _stopped_after(2, data, path, monkeypatch)
    tag, todo, config = "features", [m for m in MEMBERS if m not in finished], CONFIG
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:1000])
    elif damage == "other features":
        tag = "other"
    elif damage == "other members":
        todo = todo + [Member("gap", 1e-2, 2, 1e-2)]  # a member the saved stacks never held
    else:
        config = TrainConfig(**{**CONFIG.to_dict(), "min_delta": 0.02})
    epochs = []
    monkeypatch.setattr("headbench.train.protocol.train_epoch", _spy(epochs))
    resumed = train_members(makers(["gap", "fastai"]), todo, *data, config, known=finished,
                            checkpoint=Checkpoint(path, tag=tag))
    assert epochs[0] == 1
    if config is CONFIG:
        for member in set(resumed) & set(uninterrupted):
            assert_same_result(resumed[member], uninterrupted[member])


def test_a_checkpoint_that_cannot_be_written_is_one_line_and_training_goes_on(
        data, uninterrupted, tmp_path, monkeypatch, capsys):
    import errno
    from headbench import io, progress
    monkeypatch.setattr(checkpoint, "EVERY_S", 0.0)

    def full(path, tensors, metadata=None):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    monkeypatch.setattr(io, "atomic_write_safetensors", full)
    progress.set_quiet(False)
    results = train_members(makers(["gap", "fastai"]), MEMBERS, *data, CONFIG,
                            checkpoint=Checkpoint(tmp_path / "stacks.safetensors"))
    for member, result in results.items():
        assert_same_result(result, uninterrupted[member])
    out = capsys.readouterr().out
    assert "training state not saved (cannot write" in out and "no space left" in out
