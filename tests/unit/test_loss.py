"""The PPO loss (docs/method.md §8) against a plain per-token reference written with Python loops."""

import doctest
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attnrl_core.loss as loss_module
from attnrl_core.errors import AttnRLError
from attnrl_core.loss import k3_kl, ppo_loss

EPS_LOW, EPS_HIGH, C = 0.2, 0.28, 3.0


def reference(logp, logp_old, adv, mask, ref=None, ent=None, kl_coef=0.001, ent_coef=0.0):
    """Loss value and d loss / d logp, token by token, one branch at a time."""
    tokens = [(b, t) for b in range(len(mask)) for t in range(len(mask[b])) if mask[b][t]]
    n = max(len(tokens), 1)
    total, grad = 0.0, [[0.0] * len(row) for row in mask]
    for b, t in tokens:
        a = adv[b][t]
        d = logp[b][t] - logp_old[b][t]
        in_clamp = -20.0 <= d <= 20.0
        r = math.exp(min(max(d, -20.0), 20.0))
        dr = r if in_clamp else 0.0  # d ratio / d logp
        if a > 0:
            if r > 1 + EPS_HIGH:  # upper clip: constant
                value, g = -a * (1 + EPS_HIGH), 0.0
            else:
                value, g = -a * r, -a * dr
        elif a < 0:
            if r < 1 - EPS_LOW:  # lower clip: constant
                value, g = -a * (1 - EPS_LOW), 0.0
            elif r > C:  # dual clip: constant
                value, g = -a * C, 0.0
            else:
                value, g = -a * r, -a * dr
        else:
            value, g = 0.0, 0.0
        if ref is not None:
            k = ref[b][t] - logp[b][t]
            kc = min(max(k, -20.0), 20.0)
            kl = math.exp(kc) - kc - 1
            dkl = (-math.exp(kc) + 1) if (-20.0 <= k <= 20.0 and -10.0 <= kl <= 10.0) else 0.0
            kl = min(max(kl, -10.0), 10.0)
            value += kl_coef * kl
            g += kl_coef * dkl
        if ent is not None:
            value -= ent_coef * ent[b][t]
        total += value
        grad[b][t] = g / n
    return total / n, grad


def run(logp, logp_old, adv, mask, **kw):
    logp = torch.tensor(logp, dtype=torch.float64, requires_grad=True)
    out, stats = ppo_loss(
        logp,
        torch.tensor(logp_old, dtype=torch.float64),
        torch.tensor(adv, dtype=torch.float64),
        torch.tensor(mask),
        **{k: (torch.tensor(v, dtype=torch.float64) if isinstance(v, list) else v) for k, v in kw.items()},
    )
    out.backward()
    return out.item(), logp.grad.tolist(), stats


# Hand-picked tokens, one per branch (ratio = exp(logp - logp_old), logp_old = 0):
#   0: A=+1, r=1.5   upper clip      -> -1.28, grad 0
#   1: A=+1, r=0.5   A>0 not clipped -> -0.5,  grad -0.5
#   2: A=-1, r=0.5   lower clip      ->  0.8,  grad 0
#   3: A=-1, r=4.0   dual clip       ->  3.0,  grad 0
#   4: A=-1, r=1.5   inside          ->  1.5,  grad 1.5
#   5: A= 0, r=2.0   no signal       ->  0,    grad 0
#   6: padding (A=+1, r=1.5)         ->  ignored
# token-mean over 6 valid tokens: (-1.28 - 0.5 + 0.8 + 3.0 + 1.5) / 6 = 3.52 / 6
BRANCH_RATIOS = [1.5, 0.5, 0.5, 4.0, 1.5, 2.0, 1.5]
BRANCH_ADV = [1.0, 1.0, -1.0, -1.0, -1.0, 0.0, 1.0]
BRANCH_MASK = [True, True, True, True, True, True, False]


def test_each_clip_branch_fires_on_hand_picked_values():
    logp = [[math.log(r) for r in BRANCH_RATIOS]]
    value, grad, stats = run(logp, [[0.0] * 7], [BRANCH_ADV], [BRANCH_MASK], kl_coef=0.0)
    assert value == pytest.approx(3.52 / 6)
    assert grad[0] == pytest.approx([0.0, -0.5 / 6, 0.0, 0.0, 1.5 / 6, 0.0, 0.0])
    assert stats.clip_frac_high == pytest.approx(1 / 6)
    assert stats.clip_frac_low == pytest.approx(1 / 6)
    assert stats.dual_clip_frac == pytest.approx(1 / 6)
    assert stats.pg_loss == pytest.approx(3.52 / 6) and stats.tokens == 6
    ref_value, ref_grad = reference(logp, [[0.0] * 7], [BRANCH_ADV], [BRANCH_MASK], kl_coef=0.0)
    assert value == pytest.approx(ref_value) and grad[0] == pytest.approx(ref_grad[0])


def test_ratio_clamp_at_20():
    # log-ratio -30 is clamped to -20 (ratio e^-20, gradient cut); +30 to +20 (dual clip binds)
    value, grad, stats = run([[-30.0, 30.0]], [[0.0, 0.0]], [[1.0, -1.0]], [[True, True]], kl_coef=0.0)
    assert value == pytest.approx((-math.exp(-20.0) + 3.0) / 2)
    assert grad[0] == [0.0, 0.0]
    assert stats.dual_clip_frac == 0.5


def test_k3_matches_its_formula_and_verl_clamps():
    logp = torch.tensor([-1.0, -2.0, -1.0, -30.0, 5.0])
    ref = torch.tensor([-1.0, -1.0, -2.0, -1.0, -30.0])
    # d = ref - logp: 0, 1, -1, 29 (-> 20, k3 huge -> 10), -35 (-> -20: e^-20 + 20 - 1 -> 10)
    expected = [0.0, math.e - 2, math.exp(-1) + 1 - 1, 10.0, 10.0]
    assert k3_kl(logp, ref).tolist() == pytest.approx(expected, rel=1e-6)
    assert (k3_kl(torch.randn(100), torch.randn(100)) >= 0).all()


def test_kl_and_entropy_terms_match_the_reference():
    logp = [[-1.0, -0.5, -2.0], [-0.1, -3.0, -0.7]]
    old = [[-1.1, -0.4, -2.5], [-0.1, -1.0, -0.9]]
    adv = [[0.4, 0.4, 0.4], [-1.3, -1.3, -1.3]]
    mask = [[True, True, False], [True, True, True]]
    ref = [[-1.2, -0.5, -1.0], [-0.3, -2.0, -0.8]]
    ent = [[0.9, 1.1, 5.0], [0.2, 0.4, 0.6]]
    value, grad, stats = run(logp, old, adv, mask, ref_logp=ref, entropy=ent, kl_coef=0.05, entropy_coef=0.01)
    ref_value, ref_grad = reference(logp, old, adv, mask, ref, ent, kl_coef=0.05, ent_coef=0.01)
    assert value == pytest.approx(ref_value, rel=1e-12)
    for row, ref_row in zip(grad, ref_grad):
        assert row == pytest.approx(ref_row, rel=1e-9, abs=1e-15)
    assert stats.entropy == pytest.approx((0.9 + 1.1 + 0.2 + 0.4 + 0.6) / 5)
    kl_tokens = [k3_kl(torch.tensor(logp[b][t]), torch.tensor(ref[b][t])).item()
                 for b in range(2) for t in range(3) if mask[b][t]]
    assert stats.kl == pytest.approx(sum(kl_tokens) / 5)
    deltas = [logp[b][t] - old[b][t] for b in range(2) for t in range(3) if mask[b][t]]
    assert stats.approx_kl == pytest.approx(0.5 * sum(d * d for d in deltas) / 5)


@settings(max_examples=60, deadline=None)
@given(
    data=st.lists(
        st.tuples(
            st.floats(-3, 0),  # logp
            st.floats(-3, 0),  # logp_old
            st.floats(-2, 2),  # advantage
            st.booleans(),  # mask
            st.floats(-3, 0),  # ref_logp
            st.floats(0, 2),  # entropy
        ),
        min_size=1,
        max_size=12,
    ),
    kl_coef=st.sampled_from([0.0, 0.001, 0.1]),
    ent_coef=st.sampled_from([0.0, 0.01]),
)
def test_matches_the_reference_on_random_tokens(data, kl_coef, ent_coef):
    logp, old, adv, mask, ref, ent = ([list(col)] for col in zip(*data))
    kw = dict(ref_logp=ref, entropy=ent, kl_coef=kl_coef, entropy_coef=ent_coef)
    value, grad, _ = run(logp, old, adv, mask, **kw)
    ref_value, ref_grad = reference(logp, old, adv, mask, ref, ent, kl_coef=kl_coef, ent_coef=ent_coef)
    assert value == pytest.approx(ref_value, rel=1e-9, abs=1e-12)
    # Exactly at a clip boundary autograd's subgradient may differ; skip those tokens.
    for t, (g, rg) in enumerate(zip(grad[0], ref_grad[0])):
        r = math.exp(logp[0][t] - old[0][t])
        if min(abs(r - (1 + EPS_HIGH)), abs(r - (1 - EPS_LOW)), abs(r - C)) > 1e-9:
            assert g == pytest.approx(rg, rel=1e-9, abs=1e-12)


def test_gradients_reach_logp_only():
    torch.manual_seed(0)
    logp = torch.randn(3, 5, requires_grad=True)
    names = ("logp_old", "advantages", "ref_logp", "entropy")
    others = {name: torch.randn(3, 5, requires_grad=True) for name in names}
    mask = torch.rand(3, 5) > 0.3
    out, _ = ppo_loss(logp, others["logp_old"], others["advantages"], mask,
                      ref_logp=others["ref_logp"], entropy=others["entropy"])
    out.backward()
    assert logp.grad is not None and logp.grad.abs().sum() > 0
    assert (logp.grad[~mask] == 0).all()
    assert all(t.grad is None for t in others.values())


def test_entropy_bonus_pulls_on_entropy_when_its_coefficient_is_set():
    entropy = torch.rand(2, 3, requires_grad=True)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    out, _ = ppo_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3), mask,
                      entropy=entropy, kl_coef=0.0, entropy_coef=0.5)
    out.backward()
    assert entropy.grad.tolist() == [[-0.125] * 3, [-0.125, 0.0, 0.0]]  # -0.5 / 4 tokens, exact


def test_token_mean_weights_tokens_not_sequences():
    # One long sequence (A=+1, 3 tokens) and one short (A=-1, 1 token), ratio 1 everywhere:
    # token-mean = (-1 -1 -1 +1) / 4 = -0.5; a sequence-mean would give 0.
    adv = [[1.0, 1.0, 1.0], [-1.0, 0.0, 0.0]]
    mask = [[True, True, True], [True, False, False]]
    value, _, _ = run([[0.0] * 3] * 2, [[0.0] * 3] * 2, adv, mask, kl_coef=0.0)
    assert value == pytest.approx(-0.5)


def test_micro_batches_with_num_tokens_sum_to_the_mini_batch():
    torch.manual_seed(1)
    logp = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    old = logp.detach() + 0.3 * torch.randn(4, 6, dtype=torch.float64)
    adv, ref = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    mask = torch.rand(4, 6) > 0.4
    full, full_stats = ppo_loss(logp, old, adv, mask, ref_logp=ref)
    (g_full,) = torch.autograd.grad(full, logp)
    total = int(mask.sum())
    parts = [
        ppo_loss(logp[s], old[s], adv[s], mask[s], ref_logp=ref[s], num_tokens=total)
        for s in (slice(0, 2), slice(2, 4))
    ]
    summed = parts[0][0] + parts[1][0]
    (g_sum,) = torch.autograd.grad(summed, logp)
    assert summed.item() == pytest.approx(full.item(), rel=1e-12)
    assert torch.allclose(g_sum, g_full, rtol=1e-12, atol=1e-15)
    # stats stay per-call token means
    first_tokens = int(mask[0:2].sum())
    manual = ppo_loss(logp[0:2], old[0:2], adv[0:2], mask[0:2], ref_logp=ref[0:2])[1]
    assert parts[0][1].pg_loss == pytest.approx(manual.pg_loss) and parts[0][1].tokens == first_tokens


def test_padding_may_hold_garbage():
    logp = torch.tensor([[-0.5, float("-inf")], [-1.0, float("nan")]], requires_grad=True)
    old = torch.tensor([[-0.6, float("nan")], [-1.0, float("inf")]])
    adv = torch.tensor([[1.0, float("nan")], [-1.0, float("inf")]])
    ref = torch.tensor([[-0.4, float("nan")], [-1.1, float("-inf")]])
    mask = torch.tensor([[1, 0], [1, 0]])
    entropy = torch.tensor([[0.7, float("nan")], [0.3, float("inf")]])
    out, stats = ppo_loss(logp, old, adv, mask, ref_logp=ref, entropy=entropy)
    out.backward()
    assert math.isfinite(out.item()) and torch.isfinite(logp.grad).all()
    assert (logp.grad[:, 1] == 0).all()
    assert all(math.isfinite(v) for v in (stats.pg_loss, stats.kl, stats.entropy, stats.approx_kl))


def test_empty_mask_gives_zero_loss_that_still_backpropagates():
    logp = torch.randn(2, 3, requires_grad=True)
    out, stats = ppo_loss(logp, torch.zeros(2, 3), torch.ones(2, 3), torch.zeros(2, 3), kl_coef=0.0)
    out.backward()
    assert out.item() == 0.0 and (logp.grad == 0).all() and stats.tokens == 0


def test_missing_reference_with_a_kl_coefficient_is_refused():
    z = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="ref_logp"):
        ppo_loss(z, z, z, torch.ones(1, 2))
    out, stats = ppo_loss(z, z, z, torch.ones(1, 2), kl_coef=0.0)
    assert stats.kl == 0.0


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"clip_low": 1.0}, "clip_low"),
        ({"clip_high": -0.1}, "clip_high"),
        ({"dual_clip_c": 1.0}, "dual_clip_c"),
        ({"kl_coef": -1.0}, "kl_coef"),
        ({"entropy_coef": -0.1}, "entropy_coef"),
    ],
)
def test_bad_settings_name_the_field(kwargs, field):
    z = torch.zeros(1, 2)
    with pytest.raises(AttnRLError, match=field):
        ppo_loss(z, z, z, torch.ones(1, 2), ref_logp=z, **kwargs)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="advantages"):
        ppo_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3, 2), torch.ones(2, 3), kl_coef=0.0)


def test_docstring_examples_hold():
    result = doctest.testmod(loss_module)
    assert result.attempted > 0 and result.failed == 0
