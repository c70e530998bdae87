"""One training step of every method x policy x views x predictor, and BYOL's momentum copy."""
import itertools

import pytest
import torch

from stopgrad.config import build_config
from stopgrad.gsg import POLICIES, derangement
from stopgrad.methods import build_method


def tiny(method, policy="guided", predictor=True):
    cfg = build_config(overrides={"method": method, "stopgrad": policy, "predictor": predictor, "width": 4})
    return build_method(cfg, in_channels=1)


@pytest.mark.parametrize("method,policy,views,predictor",
                         list(itertools.product(("simsiam", "byol"), POLICIES, (2, 4), (True, False))))
def test_one_training_step(method, policy, views, predictor):
    model = tiny(method, policy, predictor)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    before = [p.detach().clone() for p in model.backbone.parameters()]
    x = torch.randn(views, 6, 1, 8, 8)
    loss, stats = model(x, derangement(6, torch.Generator().manual_seed(0)), torch.Generator().manual_seed(0))
    assert loss.shape == () and torch.isfinite(loss) and -1 <= loss.item() <= 1
    assert 0 <= stats["collapse_std"].item() <= 1
    opt.zero_grad()
    loss.backward()
    assert all(p.grad is not None for p in model.backbone.parameters())
    opt.step()
    model.update_momentum(0.99)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.backbone.parameters()))
    if not predictor:
        assert isinstance(model.predictor, torch.nn.Identity)


def test_simsiam_has_no_momentum_copy_and_byol_has_a_frozen_one():
    assert tiny("simsiam").target is None
    byol = tiny("byol")
    assert all(not p.requires_grad for p in byol.target.parameters())


def test_byol_momentum_copy_is_the_ema_of_the_online_weights_and_not_optimised():
    torch.manual_seed(0)
    model = tiny("byol")
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(trainable, lr=0.5, momentum=0.9)
    target_ids = {id(p) for p in model.target.parameters()}
    assert not target_ids & {id(p) for group in opt.param_groups for p in group["params"]}
    online = torch.nn.Sequential(model.backbone, model.projector)
    # make the target differ from the online network so the average is visible
    with torch.no_grad():
        for p in model.target.parameters():
            p.add_(torch.randn_like(p))
    m = 0.9
    for step in range(3):
        old_target = [p.detach().clone() for p in model.target.parameters()]
        x = torch.randn(2, 8, 1, 8, 8)
        loss, _ = model(x, derangement(8, torch.Generator().manual_seed(step)))
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is None for p in model.target.parameters())
        opt.step()
        # the optimiser step alone leaves the target untouched
        assert all(torch.equal(a, b) for a, b in zip(old_target, model.target.parameters()))
        model.update_momentum(m)
        for t_old, t_new, o in zip(old_target, model.target.parameters(), online.parameters()):
            torch.testing.assert_close(t_new, m * t_old + (1 - m) * o.detach())


def test_byol_targets_come_from_the_momentum_copy():
    model = tiny("byol", policy="symmetric")
    x = torch.randn(2, 4, 1, 8, 8)
    partners = derangement(4, torch.Generator().manual_seed(0))
    loss_a, _ = model(x, partners)
    with torch.no_grad():
        for p in model.target.parameters():
            p.add_(torch.randn_like(p))  # changing only the target network changes the loss
    loss_b, _ = model(x, partners)
    assert not torch.isclose(loss_a, loss_b)
