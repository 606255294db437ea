"""grpo.loss against values worked by hand (arithmetic in the comments), in float64."""

import math

import pytest
import torch
from torch.testing import assert_close

from grpo.loss import GRPOLoss, LossOutput, grpo_loss, k3_kl, loss_normalizer

F64 = torch.float64
LOSS_TYPES = ["grpo", "token_mean", "dr_grpo"]
# Every non-default objective, by name (grpo_loss / GRPOLoss keywords); "default" is today's.
# The tis caps pass some weights in the batches below and not others.
VARIANTS = {
    "default": {},
    "gspo": dict(importance_sampling_level="sequence"),
    "k1": dict(kl_estimator="k1"),
    "k2": dict(kl_estimator="k2"),
    "k3_plus": dict(kl_estimator="k3_plus"),
    "kl_ratio_weight": dict(kl_ratio_weight=True),
    "token_truncate": dict(tis_cap=1.3, tis_mode="token_truncate"),
    "token_mask": dict(tis_cap=1.3, tis_mode="token_mask"),
    "sequence_truncate": dict(tis_cap=1.3, tis_mode="sequence_truncate"),
    "sequence_mask": dict(tis_cap=1.3, tis_mode="sequence_mask"),
    "gspo+k3_plus+kl_ratio_weight+sequence_mask": dict(
        importance_sampling_level="sequence", kl_estimator="k3_plus", kl_ratio_weight=True,
        tis_cap=1.3, tis_mode="sequence_mask"),
}


def t(values):
    return torch.tensor(values, dtype=F64)


def test_clipping_each_side_for_each_sign_of_advantage():
    # Four one-token completions, old log-prob 0, so r = exp(logprob).
    # lp = +0.5: r = e^0.5 = 1.648721; A=+1 -> min(1.6487, 1.2) = 1.2 (clipped, no gradient)
    #                                    A=-1 -> min(-1.6487, -1.2) = -1.6487 (unclipped)
    # lp = -0.5: r = e^-0.5 = 0.606531; A=+1 -> min(0.6065, 0.8) = 0.6065 (unclipped)
    #                                    A=-1 -> min(-0.6065, -0.8) = -0.8 (clipped, no gradient)
    lp = t([[0.5], [0.5], [-0.5], [-0.5]]).requires_grad_()
    adv = t([1.0, -1.0, 1.0, -1.0])
    mask = torch.ones(4, 1, dtype=torch.bool)
    out = grpo_loss(lp, torch.zeros_like(lp), None, adv, mask, beta=0.0)
    r_hi, r_lo = math.exp(0.5), math.exp(-0.5)
    # grpo: per-sequence mean (one token each), then mean over the 4 sequences, negated.
    assert_close(out.loss, t(-(1.2 - r_hi + r_lo - 0.8) / 4))
    out.loss.backward()
    # d(-o/4)/d lp = -A*r/4 where unclipped, 0 where clipped.
    assert_close(lp.grad, t([[0.0], [r_hi / 4], [-r_lo / 4], [0.0]]))
    assert_close(out.metrics["clip_ratio"], t(0.5))


def test_asymmetric_clipping_uses_eps_low_below_and_eps_high_above():
    # eps_low = 0.1, eps_high = 0.3: the band is [0.9, 1.3].
    # lp = +0.2, A=+1: r = e^0.2 = 1.221403 < 1.3, not clipped (it would be with eps_high = 0.1)
    # lp = -0.2, A=-1: r = e^-0.2 = 0.818731 < 0.9, clipped: min(-0.8187, -0.9) = -0.9
    lp = t([[0.2], [-0.2]]).requires_grad_()
    out = grpo_loss(lp, torch.zeros_like(lp), None, t([1.0, -1.0]), torch.ones(2, 1),
                    eps_low=0.1, eps_high=0.3, beta=0.0, loss_type="token_mean")
    assert_close(out.loss, t(-(math.exp(0.2) - 0.9) / 2))
    out.loss.backward()
    assert_close(lp.grad, t([[-math.exp(0.2) / 2], [0.0]]))
    assert_close(out.metrics["clip_ratio"], t(0.5))
    # GRPOLoss with eps_high=None is symmetric: now the first one is clipped at 1.1 too.
    sym = GRPOLoss(eps_low=0.1, eps_high=None, beta=0.0, loss_type="token_mean")
    assert_close(sym(lp.detach(), torch.zeros(2, 1, dtype=F64), None, t([1.0, -1.0]),
                     torch.ones(2, 1)).metrics["clip_ratio"], t(1.0))


def test_k3_is_nonnegative_and_zero_at_equality():
    lp = t([-1.0, -2.0, -0.5, -3.0])
    ref = t([-1.0, -1.0, -0.7, -0.1])
    kl = k3_kl(lp, ref)
    # ref - lp = [0, 1, -0.2, 2.9]: k3 = e^d - d - 1
    assert_close(kl, t([0.0, math.e - 2, math.exp(-0.2) - 0.8, math.exp(2.9) - 3.9]))
    assert (k3_kl(torch.randn(1000, dtype=F64), torch.randn(1000, dtype=F64)) >= 0).all()


def _two_sequence_batch():
    # Sequence 0 has 3 tokens, sequence 1 has 1 (two padding slots full of garbage).
    # On-policy (old = None) so r = 1 and the surrogate is exactly A.
    lp = t([[-1.0, -2.0, -0.5], [-1.0, 123.0, float("inf")]])
    ref = t([[-1.0, -1.0, -0.5], [-2.0, float("nan"), -7.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    adv = t([1.0, -2.0])
    return lp, ref, adv, mask


# k3 per token (d = ref - lp): seq 0: d = [0, 1, 0] -> [0, e - 2, 0]; seq 1: d = -1 -> e^-1.
# Per-token loss l = -(A - 0.1 * k3):
#   seq 0: [-1, -1 + 0.1(e - 2), -1], sum S0 = -3 + 0.1(e - 2)
#   seq 1: [2 + 0.1 e^-1],            sum S1 = 2 + 0.1 e^-1
S0 = -3 + 0.1 * (math.e - 2)
S1 = 2 + 0.1 * math.exp(-1)
HAND = {
    "grpo": (S0 / 3 + S1 / 1) / 2,  # each sequence's own mean, then over the 2 sequences
    "token_mean": (S0 + S1) / 4,  # 4 real tokens
    "dr_grpo": (S0 + S1) / (2 * 3),  # N * T with max_completion_length=None -> T = 3
}


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_each_loss_type_by_hand_with_different_lengths(loss_type):
    lp, ref, adv, mask = _two_sequence_batch()
    out = grpo_loss(lp, None, ref, adv, mask, beta=0.1, loss_type=loss_type)
    assert isinstance(out, LossOutput)
    loss, metrics = out  # a NamedTuple unpacks
    assert loss.dtype == F64
    assert_close(loss, t(HAND[loss_type]))
    assert_close(metrics["kl"], t((math.e - 2 + math.exp(-1)) / 4))
    assert_close(metrics["clip_ratio"], t(0.0))


def test_dr_grpo_divides_by_the_configured_max_length():
    lp, ref, adv, mask = _two_sequence_batch()
    out = grpo_loss(lp, None, ref, adv, mask, beta=0.1, loss_type="dr_grpo",
                    max_completion_length=8)
    assert_close(out.loss, t((S0 + S1) / (2 * 8)))


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_garbage_in_padding_gives_finite_zero_gradient(loss_type):
    lp, ref, adv, mask = _two_sequence_batch()
    lp.requires_grad_()
    grpo_loss(lp, lp.detach() + 0.1, ref, adv, mask, beta=0.1, loss_type=loss_type).loss.backward()
    assert torch.isfinite(lp.grad).all()
    assert (lp.grad[~mask.bool()] == 0).all()


@pytest.mark.parametrize("loss_type", ["grpo", "token_mean"])
def test_fully_masked_completion_contributes_nothing(loss_type):
    lp, ref, adv, mask = _two_sequence_batch()
    extra = lambda x, fill: torch.cat([x, torch.full_like(x[:1], fill)])  # noqa: E731
    out = grpo_loss(extra(lp, float("nan")), None, extra(ref, 5.0), torch.cat([adv, t([9.0])]),
                    extra(mask, 0), beta=0.1, loss_type=loss_type)
    assert_close(out.loss, t(HAND[loss_type]))  # same divisor: the empty row is not counted


def test_on_policy_without_kl_is_reinforce():
    # With r = 1 and beta = 0, d loss / d lp_it = -A_i / |o_i| / N for "grpo" (N = G here).
    torch.manual_seed(0)
    lp = torch.randn(4, 5, dtype=F64, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 0, 0]])
    adv = t([0.5, -1.0, 2.0, -1.5])
    grpo_loss(lp, None, None, adv, mask, beta=0.0).loss.backward()
    lengths = mask.sum(1, keepdim=True).to(F64)
    assert_close(lp.grad, -adv[:, None] / lengths / 4 * mask)


def test_truncated_importance_sampling_weights_each_token_by_hand():
    # One update (old = None, r = 1), beta = 0, "grpo", tis_cap C = 2. Row 0 has two tokens,
    # row 1 one (its second is padding, with garbage sampler log-prob -inf there).
    # Weights w = min(exp(lp - sampler_lp), 2):
    #   row 0, token 0: lp -1.0, sampler -1.5 -> exp(0.5) = 1.648721 (under the cap)
    #   row 0, token 1: lp -2.0, sampler -3.0 -> exp(1.0) = 2.718282 -> capped at 2
    #   row 1, token 0: lp -0.5, sampler -0.2 -> exp(-0.3) = 0.740818
    # objective o = w * r * A; loss = -(mean over row 0's tokens + row 1's) / 2 sequences:
    #   A = (+1, -2): loss = -((1.648721 + 2) / 2 * 1 + 0.740818 * -2) / 2 = -0.171771
    # d loss / d lp = -w * A / |o_i| / 2 (w is a constant): row 0: -0.412180, -0.5; row 1: 0.740818
    lp = t([[-1.0, -2.0], [-0.5, 0.0]]).requires_grad_()
    sampler = t([[-1.5, -3.0], [-0.2, -math.inf]])
    mask = torch.tensor([[1, 1], [1, 0]])
    w00 = math.exp(0.5)
    out = grpo_loss(lp, None, None, t([1.0, -2.0]), mask, beta=0.0, sampler_logprobs=sampler,
                    tis_cap=2.0)
    assert_close(out.loss, t(-((w00 + 2) / 2 - 2 * math.exp(-0.3)) / 2))
    out.loss.backward()
    assert_close(lp.grad, t([[-w00 / 4, -2 / 4], [math.exp(-0.3), 0.0]]))
    assert_close(out.metrics["tis_weight"], t((w00 + 2 + math.exp(-0.3)) / 3))
    assert_close(out.metrics["tis_capped"], t(1 / 3))


def test_truncated_importance_sampling_uses_old_logprobs_and_leaves_kl_alone():
    # Two updates: old given, so w = min(exp(old - sampler), C), not exp(lp - sampler).
    # One token, lp = 0.1, old = 0, sampler = -0.4, ref = 0.3, A = 1, C = 3, beta = 0.5:
    #   r = exp(0.1) = 1.105171 (inside [0.8, 1.2]); w = exp(0.4) = 1.491825
    #   k3 = exp(0.2) - 0.2 - 1 = 0.021403; loss = -(w * r * A - 0.5 * k3)
    lp = t([[0.1]]).requires_grad_()
    loss_fn = GRPOLoss(beta=0.5, tis_cap=3.0)
    out = loss_fn(lp, t([[0.0]]), t([[0.3]]), t([1.0]), torch.ones(1, 1),
                  sampler_logprobs=t([[-0.4]]))
    w, r, k3 = math.exp(0.4), math.exp(0.1), math.exp(0.2) - 0.2 - 1
    assert_close(out.loss, t(-(w * r - 0.5 * k3)))
    assert_close(out.metrics["kl"], t(k3))
    # Without the weights: the same loss with w = 1.
    plain = GRPOLoss(beta=0.5)(lp, t([[0.0]]), t([[0.3]]), t([1.0]), torch.ones(1, 1))
    assert_close(plain.loss, t(-(r - 0.5 * k3)))


def test_exact_sampler_makes_importance_sampling_a_no_op():
    torch.manual_seed(0)
    lp = torch.randn(3, 4, dtype=F64, requires_grad=True)
    mask, adv = torch.ones(3, 4), t([1.0, -0.5, 2.0])
    a = grpo_loss(lp, None, None, adv, mask, beta=0.0, sampler_logprobs=lp.detach(), tis_cap=2.0)
    grad_a, = torch.autograd.grad(a.loss, lp)
    b = grpo_loss(lp, None, None, adv, mask, beta=0.0)
    grad_b, = torch.autograd.grad(b.loss, lp)
    assert_close(a.loss, b.loss)
    assert_close(grad_a, grad_b)
    assert_close(a.metrics["tis_weight"], t(1.0))


# ---- the variants (issue 18) ------------------------------------------------------------------


@pytest.mark.parametrize("with_tis", [False, True])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_default_keywords_are_todays_objective_bit_for_bit(loss_type, with_tis):
    # The hand values above pin today's objective at the defaults; spelled out, the new keywords
    # must give exactly the same loss, gradient and metrics (torch.equal, not a tolerance).
    torch.manual_seed(3)
    lp = torch.randn(4, 5, dtype=F64) - 1
    old, ref, sampler = (lp + 0.3 * torch.randn(4, 5, dtype=F64) for _ in range(3))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 0, 0]])
    tis = dict(tis_cap=1.2, sampler_logprobs=sampler) if with_tis else {}
    runs = []
    for spelled in ({}, dict(importance_sampling_level="token", kl_estimator="k3",
                             kl_ratio_weight=False, tis_mode="token_truncate")):
        x = lp.clone().requires_grad_()
        out = grpo_loss(x, old, ref, t([1.0, -0.5, 2.0, -1.5]), mask, eps_high=0.28,
                        loss_type=loss_type, **tis, **spelled)
        out.loss.backward()
        runs.append((out, x.grad))
    (a, grad_a), (b, grad_b) = runs
    assert torch.equal(a.loss, b.loss) and torch.equal(grad_a, grad_b)
    assert a.metrics.keys() == b.metrics.keys()
    assert all(torch.equal(a.metrics[k], b.metrics[k]) for k in a.metrics)


@pytest.mark.parametrize("loss_type", ["grpo", "token_mean"])
def test_gspo_one_ratio_per_completion_by_hand(loss_type):
    # Row 0: two tokens, log-ratios lp - old = [0.2, 0.4]; row 1: one token, log-ratio -0.1, and
    # a padding slot of garbage that must enter neither its sum nor its length.
    # s_0 = exp((0.2 + 0.4) / 2) = e^0.3 = 1.349859 > 1.28, A = +1: clipped to 1.28 (no gradient)
    # s_1 = exp(-0.1 / 1) = 0.904837 in [0.8, 1.28], A = -1: unclipped, -0.904837
    # "grpo": -(1.28 + -0.904837) / 2 sequences = -0.187582
    # "token_mean": -(2 * 1.28 - 0.904837) / 3 tokens = -0.551721
    # d loss / d lp_10 = -A_1 * s_1 * (1 / 1 token) / divisor: s_1 / 2 ("grpo"), s_1 / 3.
    lp = t([[-1.0, -2.0], [-0.5, 7.0]]).requires_grad_()
    old = t([[-1.2, -2.4], [-0.4, -3.0]])
    mask, adv = torch.tensor([[1, 1], [1, 0]]), t([1.0, -1.0])
    out = grpo_loss(lp, old, None, adv, mask, eps_high=0.28, beta=0.0, loss_type=loss_type,
                    importance_sampling_level="sequence")
    s1, divisor = math.exp(-0.1), 2 if loss_type == "grpo" else 3
    row0 = 1.28 if loss_type == "grpo" else 2 * 1.28  # its tokens' mean, or their sum
    assert_close(out.loss, t(-(row0 - s1) / divisor))
    out.loss.backward()
    assert_close(lp.grad, t([[0.0, 0.0], [s1 / divisor, 0.0]]))
    assert_close(out.metrics["clip_ratio"], t(2 / 3))  # row 0's two tokens of 3
    # The token ratios e^0.1 and e^0.3 would give another loss: the level is not ignored.
    token = grpo_loss(lp, old, None, adv, mask, eps_high=0.28, beta=0.0, loss_type=loss_type)
    assert not torch.allclose(token.loss, out.loss)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_gspo_with_one_token_per_completion_is_token_level(loss_type):
    torch.manual_seed(4)
    lp = torch.randn(6, 1, dtype=F64, requires_grad=True)
    old, ref = lp.detach() + 0.3 * torch.randn(6, 1, dtype=F64), torch.randn(6, 1, dtype=F64)
    adv, mask = torch.randn(6, dtype=F64), torch.ones(6, 1)
    outs = [grpo_loss(lp, old, ref, adv, mask, loss_type=loss_type,
                      importance_sampling_level=level) for level in ("token", "sequence")]
    grads = [torch.autograd.grad(out.loss, lp)[0] for out in outs]
    assert_close(outs[1].loss, outs[0].loss)
    assert_close(grads[1], grads[0])
    assert outs[0].metrics["clip_ratio"] > 0  # some ratios are clipped: clipping agrees too
    assert_close(outs[1].metrics["clip_ratio"], outs[0].metrics["clip_ratio"])


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_gspo_on_policy_has_the_token_level_gradient(loss_type):
    # old = None: s_i = 1 and d s_i = mean of the row's d lp, so a row's s_i A_i (or |o_i| s_i A_i
    # summed over its tokens) has the gradient of its token terms: GSPO differs only off-policy.
    torch.manual_seed(8)
    lp = torch.randn(4, 5, dtype=F64, requires_grad=True)
    ref = lp.detach() + torch.randn(4, 5, dtype=F64)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 0, 0]])
    adv, off = t([0.5, -1.0, 2.0, -1.5]), lp.detach() + 0.1 * torch.randn(4, 5, dtype=F64)
    grads = [torch.autograd.grad(grpo_loss(lp, old, ref, adv, mask, loss_type=loss_type,
                                           importance_sampling_level=level).loss, lp)[0]
             for old in (None, off) for level in ("token", "sequence")]
    assert_close(grads[1], grads[0])
    assert not torch.allclose(grads[3], grads[2])  # off-policy they differ


# One completion, two tokens, on-policy with A = 0 (the surrogate adds nothing), beta = 0.5,
# "token_mean": loss = 0.5 * (kl_0 + kl_1) / 2, d loss / d lp_t = 0.25 * d kl_t / d lp_t.
# d = ref - lp = [1.0, -0.5], and d d / d lp = -1:
KL_BY_HAND = {  # estimator: (per-token values, per-token d kl / d lp)
    # e^d - d - 1 = [e - 2, e^-0.5 - 0.5] = [0.718282, 0.106531]; gradient 1 - e^d
    "k3": ([math.e - 2, math.exp(-0.5) - 0.5], [1 - math.e, 1 - math.exp(-0.5)]),
    # -d = [-1, 0.5]; gradient 1
    "k1": ([-1.0, 0.5], [1.0, 1.0]),
    # d^2 / 2 = [0.5, 0.125]; gradient -d = [-1, 0.5]
    "k2": ([0.5, 0.125], [-1.0, 0.5]),
    # k3's values, k2's gradient
    "k3_plus": ([math.e - 2, math.exp(-0.5) - 0.5], [-1.0, 0.5]),
}


@pytest.mark.parametrize("estimator", KL_BY_HAND)
def test_kl_estimators_by_hand(estimator):
    values, grads = KL_BY_HAND[estimator]
    lp = t([[-1.0, -1.0]]).requires_grad_()
    ref = t([[0.0, -1.5]])
    out = grpo_loss(lp, None, ref, t([0.0]), torch.ones(1, 2), beta=0.5, loss_type="token_mean",
                    kl_estimator=estimator)
    assert_close(out.loss, t(0.5 * sum(values) / 2))
    assert_close(out.metrics["kl"], t(sum(values) / 2))  # the estimator's value, unweighted
    out.loss.backward()
    assert_close(lp.grad, t([[0.25 * g for g in grads]]))


def test_k3_plus_has_the_value_of_k3_and_the_gradient_of_k2():
    torch.manual_seed(5)
    lp = torch.randn(4, 6, dtype=F64, requires_grad=True)
    old, ref = lp.detach() + 0.2 * torch.randn(4, 6, dtype=F64), torch.randn(4, 6, dtype=F64)
    adv, mask = torch.randn(4, dtype=F64), torch.rand(4, 6) > 0.3
    out = {e: grpo_loss(lp, old, ref, adv, mask, beta=0.1, kl_estimator=e)
           for e in ("k2", "k3", "k3_plus")}
    grad = {e: torch.autograd.grad(o.loss, lp)[0] for e, o in out.items()}
    assert_close(out["k3_plus"].loss, out["k3"].loss)
    assert_close(out["k3_plus"].metrics["kl"], out["k3"].metrics["kl"])
    assert_close(grad["k3_plus"], grad["k2"])
    assert not torch.allclose(grad["k2"], grad["k3"])  # so the two checks above can tell


def test_kl_ratio_weight_off_policy_by_hand():
    # One token: lp = 0.1, old = 0, ref = 0.3, A = 1, beta = 0.5 (eps 0.2: r inside the band).
    #   r = e^0.1 = 1.105171, d = 0.2, k3 = e^0.2 - 1.2 = 0.021403
    #   loss = -(r * A - 0.5 * r * k3) = -1.093344
    #   d loss / d lp = -(r - 0.5 * (r * k3 + r * (1 - e^d))) = -r * (1 - 0.5 * (k3 + 1 - e^d))
    #                 = -r * (1 - 0.5 * -d) = -1.1 r = -1.215688
    # Without the weight: loss = -(r - 0.5 k3), gradient -(r - 0.5 (1 - e^d)) = -1.215872.
    lp = t([[0.1]]).requires_grad_()
    r, k3 = math.exp(0.1), math.exp(0.2) - 1.2
    out = grpo_loss(lp, t([[0.0]]), t([[0.3]]), t([1.0]), torch.ones(1, 1), beta=0.5,
                    kl_ratio_weight=True)
    assert_close(out.loss, t(-(r - 0.5 * r * k3)))
    assert_close(out.metrics["kl"], t(k3))  # the estimator's value, not r * k3
    out.loss.backward()
    assert_close(lp.grad, t([[-1.1 * r]]))


def test_kl_ratio_weight_on_policy_changes_the_gradient_not_the_value():
    # On-policy r = 1 in value, with gradient r * d lp: d (r k3) / d lp = k3 + d k3 / d lp.
    # One token, lp = 0.1, ref = 0.3, A = 0, beta = 0.5: d = 0.2, k3 = 0.021403, loss 0.010701
    #   off: 0.5 * (1 - e^0.2) = -0.110701;  on: 0.5 * (k3 + 1 - e^0.2) = 0.5 * -d = -0.1
    lp = t([[0.1]])
    k3 = math.exp(0.2) - 1.2
    for weighted, grad in ((False, 0.5 * (1 - math.exp(0.2))), (True, -0.1)):
        x = lp.clone().requires_grad_()
        out = grpo_loss(x, None, t([[0.3]]), t([0.0]), torch.ones(1, 1), beta=0.5,
                        kl_ratio_weight=weighted)
        assert_close(out.loss, t(0.5 * k3))
        out.loss.backward()
        assert_close(x.grad, t([[grad]]))


# The batch of test_truncated_importance_sampling_weights_each_token_by_hand: on-policy, beta 0,
# "grpo", A = (+1, -2); log(pi_old / pi_sampler) = row 0: [0.5, 1.0], row 1: [-0.3], so
# w = [[e^0.5, e^1], [e^-0.3]] = [[1.648721, 2.718282], [0.740818]], rho = [e^1.5, e^-0.3] =
# [4.481689, 0.740818]. C = 3 in the sequence modes: between rho_0 and e^(mean log w) = e^0.75.
# loss = -(mean over row 0 of w * 1 + w_10 * -2) / 2; d loss / d lp = -w * A / |o_i| / 2.
W00, W10 = math.exp(0.5), math.exp(-0.3)
TIS_BY_HAND = {  # mode: (C, weights [[w00, w01], [w10]], tis_capped)
    "token_truncate": (2.0, [[W00, 2.0], [W10]], 1 / 3),  # w01 = 2.718 truncated to 2
    "token_mask": (2.0, [[1.0, 0.0], [1.0]], 1 / 3),  # w01 > 2: masked
    "sequence_truncate": (3.0, [[3.0, 3.0], [W10]], 2 / 3),  # rho_0 = 4.48 -> 3; rho_1 = w10
    "sequence_mask": (3.0, [[0.0, 0.0], [1.0]], 2 / 3),  # rho_0 > 3: all of row 0 masked
}


@pytest.mark.parametrize("mode", TIS_BY_HAND)
def test_importance_sampling_modes_by_hand(mode):
    cap, ((w00, w01), (w10,)), capped = TIS_BY_HAND[mode]
    lp = t([[-1.0, -2.0], [-0.5, 0.0]]).requires_grad_()
    sampler = t([[-1.5, -3.0], [-0.2, -math.inf]])
    out = grpo_loss(lp, None, None, t([1.0, -2.0]), torch.tensor([[1, 1], [1, 0]]), beta=0.0,
                    sampler_logprobs=sampler, tis_cap=cap, tis_mode=mode)
    assert_close(out.loss, t(-((w00 + w01) / 2 - 2 * w10) / 2))
    out.loss.backward()
    assert_close(lp.grad, t([[-w00 / 4, -w01 / 4], [w10, 0.0]]))
    assert_close(out.metrics["tis_weight"], t((w00 + w01 + w10) / 3))
    assert_close(out.metrics["tis_capped"], t(capped))


@pytest.mark.parametrize("mode", ["token_mask", "sequence_mask"])
def test_masking_with_an_infinite_cap_is_no_correction(mode):
    torch.manual_seed(6)
    lp = torch.randn(3, 5, dtype=F64, requires_grad=True)
    old, ref = lp.detach() + 0.3 * torch.randn(3, 5, dtype=F64), torch.randn(3, 5, dtype=F64)
    sampler = old + 2 * torch.randn(3, 5, dtype=F64)  # weights far from 1
    mask, adv = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]]), t([1, -0.5, 2])
    plain = grpo_loss(lp, old, ref, adv, mask)
    grad_plain, = torch.autograd.grad(plain.loss, lp)
    for cap, same in ((math.inf, True), (1.0, False)):  # a finite cap does change it
        out = grpo_loss(lp, old, ref, adv, mask, sampler_logprobs=sampler, tis_cap=cap,
                        tis_mode=mode)
        grad, = torch.autograd.grad(out.loss, lp)
        assert torch.allclose(out.loss, plain.loss) is same
        assert torch.allclose(grad, grad_plain) is same
    assert_close(grpo_loss(lp, old, ref, adv, mask, sampler_logprobs=sampler, tis_cap=math.inf,
                           tis_mode=mode).metrics["tis_weight"], t(1.0))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("loss_type", ["grpo", "token_mean"])
def test_fully_masked_completion_contributes_nothing_in_every_variant(loss_type, variant):
    torch.manual_seed(7)
    lp = torch.randn(3, 4, dtype=F64) - 1
    old, ref, sampler = (lp + 0.3 * torch.randn(3, 4, dtype=F64) for _ in range(3))
    mask, adv = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]]), t([1.0, -0.5, 2.0])
    # A fourth row, fully masked, full of garbage (nan log-probs, -inf sampler, a big advantage).
    extra = lambda x, fill: torch.cat([x, torch.full_like(x[:1], fill)])  # noqa: E731
    kwargs = dict(VARIANTS[variant], loss_type=loss_type)
    results = []
    for rows in ((lp, old, ref, sampler, adv, mask),
                 (extra(lp, math.nan), extra(old, 3.0), extra(ref, 5.0), extra(sampler, -math.inf),
                  torch.cat([adv, t([9.0])]), extra(mask, 0))):
        x = rows[0].clone().requires_grad_()
        tis = dict(sampler_logprobs=rows[3]) if "tis_cap" in kwargs else {}
        out = grpo_loss(x, rows[1], rows[2], rows[4], rows[5], beta=0.1, **tis, **kwargs)
        out.loss.backward()
        results.append((out, x.grad))
    (without, grad), (with_empty, grad_empty) = results
    assert_close(with_empty.loss, without.loss)
    assert_close(grad_empty, torch.cat([grad, torch.zeros(1, 4, dtype=F64)]))
    assert with_empty.metrics.keys() == without.metrics.keys()
    for name in without.metrics:  # token means: the empty row has no tokens
        assert_close(with_empty.metrics[name], without.metrics[name])


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_zero_advantages_give_zero_policy_gradient(loss_type):
    lp = torch.randn(3, 4, dtype=F64, requires_grad=True)
    old = lp.detach() + 0.3 * torch.randn(3, 4, dtype=F64)
    grpo_loss(lp, old, None, torch.zeros(3, dtype=F64), torch.ones(3, 4), beta=0.0,
              loss_type=loss_type).loss.backward()
    assert_close(lp.grad, torch.zeros_like(lp))


# k3_plus is left out: its gradient is by design not that of its value (k2's gradient, k3's
# value), which test_k3_plus_has_the_value_of_k3_and_the_gradient_of_k2 checks instead.
@pytest.mark.parametrize("variant", [v for v in VARIANTS if "k3_plus" not in v])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_gradcheck(loss_type, variant):
    torch.manual_seed(1)
    lp = (torch.randn(3, 4, dtype=F64) * 0.1).requires_grad_()
    old = lp.detach() + 0.05 * torch.randn(3, 4, dtype=F64)  # ratios near 1: away from the kinks
    ref = lp.detach() + torch.randn(3, 4, dtype=F64)
    # Given old, the importance weights are constants of x (on-policy they would move with x).
    sampler = old + 0.4 * torch.randn(3, 4, dtype=F64)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    adv = t([1.0, -0.5, 0.25])
    kwargs = dict(VARIANTS[variant], loss_type=loss_type)
    if "tis_cap" in kwargs:
        kwargs["sampler_logprobs"] = sampler
    fn = lambda x: grpo_loss(x, old, ref, adv, mask, **kwargs).loss  # noqa: E731
    assert torch.autograd.gradcheck(fn, (lp,))


def _split_batch(loss_type, ranks, micro_batches, max_len, variant="default"):
    """Gradient of a shared parameter when the step is split over ranks x micro-batches.

    Ranks average their gradients (DDP / DeepSpeed), so each rank divides by normalizer / ranks;
    micro-batches on one rank accumulate (sum) their gradients.
    """
    torch.manual_seed(2)
    n, t_len, d = 12, 6, 3
    feats = torch.randn(n, t_len, d, dtype=F64)
    base = torch.randn(n, t_len, dtype=F64) - 2
    old = base + 0.3 * torch.randn(n, t_len, dtype=F64)
    ref = base + 0.3 * torch.randn(n, t_len, dtype=F64)
    lengths = torch.tensor([6, 1, 3, 0, 5, 2, 6, 4, 1, 0, 3, 2])
    mask = torch.arange(t_len)[None] < lengths[:, None]
    adv = torch.randn(n, dtype=F64)
    sampler = old + 0.3 * torch.randn(n, t_len, dtype=F64)
    w = torch.zeros(d, dtype=F64, requires_grad=True)
    loss_fn = GRPOLoss(eps_low=0.2, eps_high=0.28, beta=0.05, loss_type=loss_type,
                       max_completion_length=max_len, **VARIANTS[variant])
    normalizer = loss_fn.normalizer(mask)  # whole step; a real run all-reduces this over ranks
    rank_grads = []
    for rank_rows in torch.arange(n).chunk(ranks):
        grad = torch.zeros(d, dtype=F64)
        for rows in rank_rows.chunk(micro_batches):
            lp = base[rows] + feats[rows] @ w
            loss = loss_fn(lp, old[rows], ref[rows], adv[rows], mask[rows],
                           normalizer=normalizer / ranks,
                           sampler_logprobs=sampler[rows] if loss_fn.tis_cap else None).loss
            grad += torch.autograd.grad(loss, w)[0]
        rank_grads.append(grad)
    return torch.stack(rank_grads).mean(0)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("ranks,micro_batches", [(1, 2), (1, 3), (1, 6), (2, 1), (2, 3), (3, 2)])
def test_gradient_does_not_depend_on_micro_batches_or_ranks(loss_type, ranks, micro_batches,
                                                            variant):
    max_len = 8 if loss_type == "dr_grpo" else None
    full = _split_batch(loss_type, 1, 1, max_len, variant)
    assert full.abs().sum() > 0
    assert_close(_split_batch(loss_type, ranks, micro_batches, max_len, variant), full)


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "default"])
def test_each_variant_changes_the_gradient(variant):
    # So the split test above is not passing on a keyword GRPOLoss silently ignores.
    assert not torch.allclose(_split_batch("grpo", 1, 1, None, variant),
                              _split_batch("grpo", 1, 1, None))


def test_loss_normalizer_counts():
    mask = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 0, 0]])
    assert loss_normalizer(mask, "grpo") == 2  # sequences with at least one token
    assert loss_normalizer(mask, "token_mean") == 3  # tokens
    assert loss_normalizer(mask, "dr_grpo") == 9  # N * T
    assert loss_normalizer(mask, "dr_grpo", max_completion_length=10) == 30


def test_dtype_in_is_dtype_out():
    for dtype in (torch.float32, torch.float64):
        lp = torch.randn(2, 3, dtype=dtype)
        out = grpo_loss(lp, None, lp - 0.1, torch.ones(2, dtype=dtype), torch.ones(2, 3))
        assert out.loss.dtype == dtype and out.metrics["kl"].dtype == dtype


@pytest.mark.parametrize("kwargs,match", [
    (dict(old_logprobs=torch.zeros(2, 4)), "old_logprobs"),
    (dict(completion_mask=torch.ones(3, 3)), "completion_mask"),
    (dict(advantages=torch.zeros(3)), "advantages"),
    (dict(ref_logprobs=None), "ref_logprobs"),
    (dict(loss_type="ppo"), "loss_type"),
    (dict(eps_low=0.0), "eps_low"),
    (dict(eps_high=1.5), "eps_high"),
    (dict(beta=-1.0), "beta"),
    (dict(tis_cap=0.5, sampler_logprobs=torch.zeros(2, 3)), "tis_cap"),
    (dict(tis_cap=2.0), "sampler_logprobs"),
    (dict(sampler_logprobs=torch.zeros(2, 3)), "tis_cap"),
    (dict(tis_cap=2.0, sampler_logprobs=torch.zeros(3, 3)), "sampler_logprobs"),
    (dict(importance_sampling_level="seq"), r"importance_sampling_level must be one of \('token'"),
    (dict(kl_estimator="k4"), r"kl_estimator must be one of \('k3', 'k1', 'k2', 'k3_plus'\)"),
    (dict(tis_mode="truncate", tis_cap=2.0, sampler_logprobs=torch.zeros(2, 3)),
     "tis_mode must be one of"),
    (dict(tis_mode="token_mask"), "tis_mode='token_mask' needs tis_cap"),
])
def test_bad_input_names_the_argument(kwargs, match):
    args = dict(logprobs=torch.zeros(2, 3), old_logprobs=None, ref_logprobs=torch.zeros(2, 3),
                advantages=torch.zeros(2), completion_mask=torch.ones(2, 3), beta=0.04)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        grpo_loss(**args)
