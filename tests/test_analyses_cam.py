"""Class activation maps: exact CAMs average to the logits, Grad-CAM finds a planted feature."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from headbench.analyses.cam import exact_cam, grad_cam, overlay_cam, safe_name
from headbench.errors import HeadbenchError
from headbench.heads import create_head
from headbench.train import seeded


def test_exact_cam_of_gap_head_averages_to_its_logits():
    with seeded(0):
        head = create_head("gap", 12, 4, (5, 5)).eval()
    f = torch.randn(12, 5, 5)
    cam = exact_cam(head, f)
    assert cam.shape == (4, 5, 5)
    torch.testing.assert_close(cam.mean(dim=(1, 2)), head(f[None])[0].detach(), atol=1e-5,
                               rtol=0)


def test_exact_cam_of_dense_map_head_averages_to_its_logits():
    with seeded(0):
        head = create_head("dense_map", 12, 4, (5, 5)).eval()
    f = torch.randn(1, 12, 5, 5)
    torch.testing.assert_close(exact_cam(head, f).mean(dim=(1, 2)), head(f)[0].detach(),
                               atol=1e-5, rtol=0)


def test_exact_cam_refuses_head_with_hidden_layers():
    head = create_head("gap", 12, 4, (5, 5), hidden=[8])
    assert not head.exact_cam
    with pytest.raises(HeadbenchError, match="not linear"):
        exact_cam(head, torch.randn(12, 5, 5))


def _planted_map() -> torch.Tensor:
    f = 0.01 * torch.rand(6, 5, 5, generator=torch.Generator().manual_seed(0))
    f[0, 2, 3] = 5.0
    return f


@pytest.mark.parametrize("name", ["gap", "gmp", "flatten"])
def test_grad_cam_highlights_the_planted_feature(name):
    head = create_head(name, 6, 3, (5, 5)).eval()
    with torch.no_grad():
        for p in head.parameters():
            p.zero_()
        fc = head.fc.weight.view(3, 6, -1)  # flatten orders features channel-major
        fc[1, 0] = 1.0  # class 1 responds to channel 0 (at every position)
    cam = grad_cam(head, _planted_map(), class_index=1)
    assert cam.shape == (5, 5)
    assert (cam >= 0).all()
    assert divmod(int(cam.argmax()), 5) == (2, 3)


def test_overlay_cam_is_an_image_of_the_crop_size():
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    cam = torch.zeros(4, 4)
    cam[0, 0] = 1.0
    out = np.asarray(overlay_cam(image, cam))
    assert out.shape == (32, 32, 3)
    assert not np.array_equal(out[0, 0], out[31, 31])  # the hot corner is coloured differently


def test_safe_name_keeps_file_names_plain():
    assert safe_name("golden retriever/dog") == "golden_retriever_dog"
    assert safe_name("../..") == "class"
