"""genlab.metrics.gradcam: maps land on the region that decides the class; the model is left alone."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from genlab.metrics.gradcam import (
    GradCAM,
    cam_mass_baseline,
    cam_mass_in_mask,
    dilate,
    find_last_conv,
    localisation_scores,
    overlay,
    pointing_game,
    pointing_game_baseline,
    save_gradcam_figure,
)

SIZE = 32
SQ = 6


def _square_data(n: int, g: torch.Generator, always_square: bool = False):
    """Noise in [0, 0.4]; class 1 has a bright 6x6 square somewhere, class 0 none.

    Returns images (n,1,32,32), labels, and the square's mask (also for class 0: where it
    would have been)."""
    x = torch.rand(n, 1, SIZE, SIZE, generator=g) * 0.4
    y = torch.ones(n, dtype=torch.long) if always_square else torch.randint(0, 2, (n,),
                                                                            generator=g)
    m = torch.zeros(n, SIZE, SIZE, dtype=torch.bool)
    for i in range(n):
        r, c = torch.randint(0, SIZE - SQ, (2,), generator=g).tolist()
        m[i, r:r + SQ, c:c + SQ] = True
        if y[i] == 1:
            x[i, 0, r:r + SQ, c:c + SQ] = 1.0
    return x, y, m


def _fixed_net() -> nn.Sequential:
    """Class 1's logit is the mean of a 'bright pixel' detector; class 0's a dark detector
    with a tiny weight, so only bright pixels (the square) can raise class 1."""
    net = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(2, 2, 1),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2, 2),
    )
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net[0].weight[0, 0, 1, 1] = 1.0
        net[0].bias[0] = -0.5            # ch0: pixels brighter than 0.5
        net[0].weight[1, 0, 1, 1] = -1.0
        net[0].bias[1] = 0.5             # ch1: pixels darker than 0.5
        net[3].weight[0, 0, 0, 0] = 1.0
        net[3].weight[1, 1, 0, 0] = 1.0
        net[7].weight[1, 0] = 50.0       # class 1 <- bright
        net[7].weight[0, 1] = 1.0        # class 0 <- dark
    return net.eval()


@pytest.fixture(scope="module")
def trained_net():
    """A small conv net trained for a few steps to tell 'bright square' from 'none'."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 2),
    )
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(60):
        x, y, _ = _square_data(64, g)
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for p in net.parameters():
        p.grad = None
    return net.eval()


def _snapshot(net):
    return ({k: v.clone() for k, v in net.state_dict().items()},
            [p.requires_grad for p in net.parameters()],
            [p.grad for p in net.parameters()],
            [m.training for m in net.modules()])


def _assert_untouched(net, snap):
    state, flags, grads, modes = snap
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    assert [p.requires_grad for p in net.parameters()] == flags
    assert all(g is None for g in grads) and all(p.grad is None for p in net.parameters())
    assert [m.training for m in net.modules()] == modes


def _no_hooks(net):
    return all(len(m._forward_hooks) == 0 and len(m._backward_hooks) == 0
               for m in net.modules())


# --------------------------------------------------------------------- the maps
def test_fixed_net_cam_lands_on_square():
    net = _fixed_net()
    g = torch.Generator().manual_seed(1)
    x, _, m = _square_data(8, g, always_square=True)
    with GradCAM(net) as cam:
        assert cam.target_layer is net[3]
        maps = cam(x)  # predicted class
        assert torch.all(cam.class_idx == 1)
    assert maps.shape == (8, SIZE, SIZE)
    assert float(maps.min()) >= 0.0 and float(maps.max()) == pytest.approx(1.0)
    mass = cam_mass_in_mask(maps, m)
    base = cam_mass_baseline(m)
    assert np.all(base == pytest.approx(SQ * SQ / SIZE ** 2))
    # pooling by 2 smears an odd-aligned square over its 8x8 cells: 36/64 at worst
    assert mass.min() > 0.5 > 10 * base.max()
    assert pointing_game(maps, m).mean() == 1.0
    assert _no_hooks(net)


def test_trained_net_cam_beats_uniform_baseline(trained_net, tmp_path):
    net = trained_net
    g = torch.Generator().manual_seed(123)
    x, y, m = _square_data(32, g, always_square=True)
    with torch.no_grad():
        acc = (net(x).argmax(1) == y).float().mean().item()
    assert acc > 0.9
    snap = _snapshot(net)
    with GradCAM(net) as cam:
        maps = cam(x, class_idx=1)
    _assert_untouched(net, snap)
    assert _no_hooks(net)
    scores = localisation_scores(maps, m, tolerance_px=2)
    assert scores["mass_in_mask"].mean() > 4 * scores["mass_baseline"].mean()
    assert scores["pointing_game"].mean() >= 0.8 > 5 * scores["pointing_baseline"].mean()
    save_gradcam_figure(tmp_path / "cam.png", x[0], maps[0], m[0], title="toy")
    assert (tmp_path / "cam.png").read_bytes()[:4] == b"\x89PNG"


def test_model_left_as_found_frozen_train_mode_no_grad():
    net = _fixed_net()
    for p in net[0].parameters():
        p.requires_grad_(False)           # partly frozen
    net.train()                           # and in train mode
    snap = _snapshot(net)
    x, _, _ = _square_data(2, torch.Generator().manual_seed(2), always_square=True)
    cam = GradCAM(net, target_layer=net[3])
    with torch.no_grad():                 # and called under no_grad
        maps = cam(x)
    cam.close()
    _assert_untouched(net, snap)
    assert net.training
    assert _no_hooks(net)
    assert maps.max() > 0
    # fully frozen, eval mode
    for p in net.parameters():
        p.requires_grad_(False)
    net.eval()
    snap = _snapshot(net)
    with GradCAM(net) as cam:
        maps2 = cam(x)
    _assert_untouched(net, snap)
    assert torch.allclose(maps, maps2)


def test_hooks_removed_and_closed_cam_refuses():
    net = _fixed_net()
    cam = GradCAM(net)
    assert len(net[3]._forward_hooks) == 1
    # between calls the hook is inert: the forward is unchanged
    x = torch.rand(2, 1, SIZE, SIZE)
    with torch.no_grad():
        before = net(x)
    cam.close()
    cam.close()  # idempotent
    assert _no_hooks(net)
    with torch.no_grad():
        assert torch.equal(net(x), before)
    with pytest.raises(RuntimeError):
        cam(x)


def test_class_idx_forms_and_input_size():
    net = _fixed_net()
    x = torch.rand(3, 1, 24, 40)  # non-square, upsampled from (12, 20)
    with GradCAM(net) as cam:
        a = cam(x, class_idx=0)
        b = cam(x, class_idx=[0, 0, 0])
        c = cam(x, class_idx=torch.tensor([0, 1, 0]))
        assert cam.class_idx.tolist() == [0, 1, 0]
        with pytest.raises(ValueError):
            cam(x, class_idx=5)
        with pytest.raises(ValueError):
            cam(x, class_idx=[0, 1])
    assert a.shape == (3, 24, 40)
    assert torch.allclose(a, b) and torch.allclose(a[0], c[0])
    assert float(a.min()) >= 0 and float(a.max()) <= 1


def test_inplace_relu_after_target_does_not_change_cam():
    torch.manual_seed(0)
    net = _fixed_net()
    net_plain = _fixed_net()
    net_plain[4] = nn.ReLU(inplace=False)
    x = torch.rand(2, 1, SIZE, SIZE)
    with GradCAM(net) as c1, GradCAM(net_plain) as c2:
        assert torch.allclose(c1(x, 1), c2(x, 1))


def test_find_last_conv():
    net = _fixed_net()
    assert find_last_conv(net) is net[3]
    with pytest.raises(ValueError):
        find_last_conv(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))


# --------------------------------------------------------------------- display
def test_overlay_shapes_and_types():
    cam = torch.rand(16, 20)
    out = overlay(torch.rand(1, 16, 20), cam)
    assert isinstance(out, torch.Tensor) and out.shape == (3, 16, 20)
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    out = overlay(np.random.rand(3, 16, 20), cam.numpy(), cmap="inferno")
    assert isinstance(out, np.ndarray) and out.shape == (3, 16, 20)
    with pytest.raises(ValueError):
        overlay(torch.rand(1, 16, 20), torch.rand(8, 8))


# --------------------------------------------------------------------- localisation scores
def test_localisation_scores_by_hand():
    mask = torch.zeros(10, 10, dtype=torch.bool)
    mask[2:4, 2:7] = True                      # 10 pixels = 0.1 of the image
    flat = torch.ones(10, 10)
    assert cam_mass_in_mask(flat, mask) == pytest.approx(0.1)
    assert cam_mass_baseline(mask) == pytest.approx(0.1)
    assert pointing_game(flat, mask) == pytest.approx(0.1) == pointing_game_baseline(mask)

    cam = torch.zeros(10, 10)
    cam[3, 4] = 1.0                             # peak inside
    cam[8, 8] = 0.5
    assert cam_mass_in_mask(cam, mask) == pytest.approx(1.0 / 1.5)
    assert pointing_game(cam, mask) == 1.0

    cam = torch.zeros(10, 10)
    cam[5, 4] = 1.0                             # peak 2 px below the mask
    assert pointing_game(cam, mask) == 0.0
    assert pointing_game(cam, mask, tolerance_px=1) == 0.0
    assert pointing_game(cam, mask, tolerance_px=2) == 1.0
    assert pointing_game_baseline(mask, 2) == pytest.approx(dilate(mask, 2).float().mean())
    assert pointing_game_baseline(mask, 2) > 0.1

    assert math.isnan(cam_mass_in_mask(torch.zeros(10, 10), mask))
    with pytest.raises(ValueError):
        cam_mass_in_mask(-torch.ones(10, 10), mask)
    # batched, shared mask
    batch = torch.stack([flat, cam])
    v = cam_mass_in_mask(batch, mask)
    assert v.shape == (2,) and v[0] == pytest.approx(0.1) and v[1] == 0.0


def test_gradcam_module_does_not_import_families():
    import ast
    import inspect

    import genlab.metrics.gradcam as G

    tree = ast.parse(inspect.getsource(G))
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not any("families" in n for n in names)
