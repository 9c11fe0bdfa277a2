"""Every loss and estimator on small hand-computed tensors."""

import math

import pytest
import torch

from stagent_ray.train import losses as L


def test_masked_mean_aggregations():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    m = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert L.masked_mean(x, m).item() == pytest.approx(10 / 4)
    assert L.masked_mean(x, m, "seq-mean-token-mean").item() == pytest.approx((2 + 4) / 2)
    assert L.masked_mean(x, m, "seq-mean-token-sum").item() == pytest.approx((6 + 4) / 2)
    with pytest.raises(ValueError):
        L.masked_mean(x, m, "bogus")


def test_group_advantages():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5]])
    adv = L.group_advantages(r)
    assert torch.allclose(adv[0], torch.tensor([1.0, -1.0, -1.0, 1.0]), atol=1e-4)
    assert torch.allclose(adv[1], torch.zeros(4))  # equal rewards carry no signal
    raw = L.group_advantages(r, normalize_std=False)
    assert torch.allclose(raw[0], torch.tensor([0.5, -0.5, -0.5, 0.5]))


def test_gae_skips_masked_tokens():
    # tokens: a0 a1 [tool] a2 ; reward 1 at the last token; gamma=1, lam=0.5
    rewards = torch.tensor([[0.0, 0.0, 0.0, 1.0]])
    values = torch.tensor([[0.2, 0.4, 9.0, 0.6]])   # the tool token's value is ignored
    mask = torch.tensor([[1, 1, 0, 1]])
    adv, ret = L.gae(rewards, values, mask, gamma=1.0, lam=0.5)
    d2 = 1.0 - 0.6                  # last token: r - V
    d1 = 0.0 + 0.6 - 0.4            # bootstraps from a2 across the tool token
    d0 = 0.0 + 0.4 - 0.2
    a2, a1 = d2, d1 + 0.5 * d2
    a0 = d0 + 0.5 * a1
    assert torch.allclose(adv, torch.tensor([[a0, a1, 0.0, a2]]), atol=1e-6)
    assert torch.allclose(ret, torch.tensor([[a0 + 0.2, a1 + 0.4, 0.0, a2 + 0.6]]), atol=1e-6)


def test_clipped_policy_loss_asymmetric():
    old = torch.zeros(1, 3)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))
    mask = torch.tensor([[1, 1, 1]])
    # positive advantage: ratio 1.5 is clipped at 1 + 0.28; 0.5 stays (min picks it)
    loss, frac = L.clipped_policy_loss(new, old, torch.tensor([1.0]), mask, 0.2, 0.28)
    assert loss.item() == pytest.approx(-(1.28 + 0.5 + 1.1) / 3, abs=1e-6)
    assert frac.item() == pytest.approx(1 / 3)
    # negative advantage: ratio 0.5 is clipped at 1 - 0.2 (pessimistic side), 1.5 stays
    loss, frac = L.clipped_policy_loss(new, old, torch.tensor([-1.0]), mask, 0.2, 0.28)
    assert loss.item() == pytest.approx((1.5 + 0.8 + 1.1) / 3, abs=1e-6)
    assert frac.item() == pytest.approx(1 / 3)
    # masked tokens contribute nothing, not even to the gradient
    new = new.clone().requires_grad_(True)
    loss, _ = L.clipped_policy_loss(new, old, torch.tensor([1.0]), torch.tensor([[1, 0, 1]]))
    loss.backward()
    assert new.grad[0, 1].item() == 0.0


def test_gspo_sequence_ratio():
    old = torch.zeros(2, 2)
    new = torch.tensor([[0.1, 0.3], [0.0, 0.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    adv = torch.tensor([1.0, -1.0])
    loss, frac = L.gspo_policy_loss(new, old, adv, mask, clip_low=0.1, clip_high=0.1)
    s0 = math.exp(0.2)  # geometric mean of e^0.1 and e^0.3, then clipped to 1.1
    assert loss.item() == pytest.approx((-min(s0, 1.1) + 1.0) / 2, abs=1e-6)
    assert frac.item() == pytest.approx(0.5)


def test_kl_estimators_and_entropy():
    logp = torch.log(torch.tensor([[0.5, 0.25]]))
    ref = torch.log(torch.tensor([[0.25, 0.25]]))
    k1 = L.kl_penalty(logp, ref, "k1")
    k3 = L.kl_penalty(logp, ref, "k3")
    assert torch.allclose(k1, torch.tensor([[math.log(2), 0.0]]))
    assert k3[0, 0].item() == pytest.approx(0.5 - math.log(0.5) - 1)
    assert k3[0, 1].item() == pytest.approx(0.0)
    logits = torch.log(torch.tensor([[[0.5, 0.5], [1.0, 1e-12]]]))
    ent = L.entropy_from_logits(logits)
    assert ent[0, 0].item() == pytest.approx(math.log(2), abs=1e-6)
    assert ent[0, 1].item() == pytest.approx(0.0, abs=1e-6)


def test_value_loss_and_sft_loss():
    v = torch.tensor([[1.0, 0.0]])
    old = torch.tensor([[0.0, 0.0]])
    ret = torch.tensor([[0.5, 1.0]])
    m = torch.tensor([[1, 1]])
    # token 0: clipped value 0.2 -> max(0.25, 0.09) = 0.25; token 1: 1.0
    assert L.value_loss(v, old, ret, m, clip=0.2).item() == pytest.approx(0.5 * (0.25 + 1.0) / 2)
    logits = torch.log(torch.tensor([[[0.25, 0.75], [0.5, 0.5]]]))
    labels = torch.tensor([[1, 0]])
    assert L.sft_loss(logits, labels, torch.tensor([[1, 0]])).item() == pytest.approx(-math.log(0.75))
    lp = L.token_logprobs(logits, labels, temperature=1.0)
    assert torch.allclose(lp, torch.log(torch.tensor([[0.75, 0.5]])))
