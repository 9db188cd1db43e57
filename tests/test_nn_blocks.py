"""symlog / two-hot and the norms against hand-computed values."""

import math

import torch

from wmlab.nn.distributions import TwoHot, symexp, symlog
from wmlab.nn.norms import RMSNorm, SimNorm


def test_symlog_values_and_round_trip():
    x = torch.tensor([-100.0, -1.0, 0.0, 0.5, 1e4])
    assert torch.allclose(symlog(torch.tensor([math.e - 1, -(math.e - 1)])), torch.tensor([1.0, -1.0]))
    assert torch.allclose(symexp(symlog(x)), x, rtol=1e-5)


def test_two_hot_weights_and_round_trip():
    two_hot = TwoHot(bins=5, low=-2.0, high=2.0, transform="identity")  # points -2 -1 0 1 2
    target = two_hot.encode(torch.tensor([0.25, 2.0, 5.0]))
    assert torch.allclose(target[0], torch.tensor([0, 0, 0.75, 0.25, 0]))
    assert torch.allclose(target[1], torch.tensor([0, 0, 0, 0, 1.0]))
    assert torch.allclose(target[2], torch.tensor([0, 0, 0, 0, 1.0]))  # clipped to the range
    values = torch.tensor([-300.0, -2.5, 0.0, 0.01, 42.0, 1e4])
    dreamer = TwoHot()  # 255 bins, symlog, [-20, 20]
    logits = torch.log(dreamer.encode(values) + 1e-12)
    assert torch.allclose(dreamer.decode(logits), values, rtol=1e-4, atol=1e-4)


def test_two_hot_loss_is_minimal_at_the_target():
    two_hot = TwoHot(bins=11, low=-5, high=5, transform="identity")
    y = torch.tensor([1.3])
    good = torch.log(two_hot.encode(y) + 1e-9)
    bad = torch.zeros(1, 11)
    assert two_hot.loss(good, y) < two_hot.loss(bad, y)


def test_simnorm_matches_the_softmax_of_each_group_in_values_and_gradients():
    torch.manual_seed(0)
    x = (torch.randn(5, 24, dtype=torch.float64) * 30).requires_grad_()  # large logits: needs the max shift
    expected = torch.softmax(x.detach().view(5, 3, 8), -1).view(5, 24)
    assert torch.allclose(SimNorm(8)(x), expected, atol=1e-12)
    assert torch.autograd.gradcheck(SimNorm(8), (torch.randn(4, 16, dtype=torch.float64, requires_grad=True),))
    weights = torch.randn(5, 24, dtype=torch.float64)
    (SimNorm(8)(x) * weights).sum().backward()
    reference = x.detach().clone().requires_grad_()
    (torch.softmax(reference.view(5, 3, 8), -1).view(5, 24) * weights).sum().backward()
    assert torch.allclose(x.grad, reference.grad, atol=1e-12)


def test_simnorm_groups_sum_to_one_and_rmsnorm_scale():
    x = torch.randn(3, 16)
    y = SimNorm(8)(x)
    assert torch.allclose(y.view(3, 2, 8).sum(-1), torch.ones(3, 2))
    assert (y >= 0).all()
    out = RMSNorm(4, eps=0.0)(torch.tensor([[2.0, 2.0, 2.0, 2.0]]))
    assert torch.allclose(out, torch.ones(1, 4))
