"""The sampler on hand-made logits, the stop rules, the params, and the vLLM adapter's missing-package error."""
from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from mindrl.rollout import ROLLOUT_ENGINES, BuiltinRolloutEngine, RolloutEngine, SamplingParams, group_outputs
from mindrl.rollout.base import RolloutOutput
from mindrl.rollout.sampling import (filter_logits, inverse_cdf, row_keys, row_uniforms, sample, splitmix64,
                                    splitmix64_py)
from mindrl.rollout.stops import StopChecker
from mindrl.rollout.vllm_engine import VllmRolloutEngine

PROBS = torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]])
LOGITS = PROBS.log()


def kept(logits: torch.Tensor) -> list[int]:
    return torch.isfinite(logits[0]).nonzero()[:, 0].tolist()


@pytest.mark.parametrize("kwargs,expected", [
    (dict(top_k=2), [0, 1]),
    (dict(top_k=-1), [0, 1, 2, 3, 4]),
    (dict(top_k=0), [0, 1, 2, 3, 4]),
    (dict(top_p=0.75), [0, 1, 2]),  # mass before token 2 is 0.70 < 0.75; before token 3 it is 0.85
    (dict(top_p=0.4), [0]),  # the most likely token always survives
    (dict(min_p=0.25), [0, 1, 2]),  # threshold 0.125
    # top-p applies to the top-k-renormalised distribution: [.5, .2, .15] / .85 -> mass before
    # token 2 is .82 > .8, so it goes (it would stay without renormalisation: .70 < .8).
    (dict(top_k=3, top_p=0.8), [0, 1]),
])
def test_filters_keep_exactly_the_expected_tokens(kwargs, expected):
    assert kept(filter_logits(LOGITS, **kwargs)) == expected


def test_filters_handle_unsorted_rows_and_padding():
    logits = torch.tensor([[0.1, 0.2, 0.15, 0.5, 0.05], [0.05, 0.5, 0.1, 0.2, 0.15]]).log()
    logits = torch.cat([logits, torch.full((2, 3), float("-inf"))], dim=1)  # padded vocab columns
    out = filter_logits(logits, top_p=0.75)
    assert torch.isfinite(out[0]).nonzero()[:, 0].tolist() == [1, 2, 3]
    assert torch.isfinite(out[1]).nonzero()[:, 0].tolist() == [1, 3, 4]


def test_hash_matches_python_reference():
    xs = [0, 1, 2**40 + 7, -5, 2**63 - 1]
    got = splitmix64(torch.tensor(xs, dtype=torch.int64)).tolist()
    assert [g & (2**64 - 1) for g in got] == [splitmix64_py(x & (2**64 - 1)) for x in xs]


def test_row_uniforms_are_uniform_and_keyed():
    keys = row_keys(5, torch.arange(50000), torch.zeros(50000, dtype=torch.long))
    u = row_uniforms(keys, torch.zeros(50000, dtype=torch.long))
    assert u.dtype == torch.float64 and 0 < u.min() and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.01 and abs(u.var().item() - 1 / 12) < 0.005
    assert len(set(u.tolist())) == 50000
    assert torch.equal(u, row_uniforms(keys, torch.zeros(50000, dtype=torch.long)))
    other_step = row_uniforms(keys, torch.ones(50000, dtype=torch.long))
    assert (other_step != u).all()
    # Independent of the step's value for the same row: consecutive steps are uncorrelated.
    assert abs(torch.corrcoef(torch.stack([u, other_step]))[0, 1].item()) < 0.02


def chi_square_p(tokens: torch.Tensor, probs: torch.Tensor) -> float:
    """p-value of Pearson's chi-square test of sampled `tokens` against `probs` (zero-prob tokens
    must never appear)."""
    from scipy.stats import chisquare

    counts = torch.bincount(tokens, minlength=len(probs)).double()
    assert counts[probs == 0].sum() == 0, "a zero-probability token was sampled"
    keep = probs > 0
    return float(chisquare(counts[keep].numpy(), (probs[keep] / probs[keep].sum() * len(tokens)).numpy()).pvalue)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampler_matches_softmax_chi_square(temperature):
    """Pearson chi-square of 40,000 draws against softmax(logits / T) on a 12-token vocabulary."""
    rows = 40000
    logits = torch.randn(1, 12, generator=torch.Generator().manual_seed(3)) * 1.5
    keys = row_keys(21, torch.arange(rows), torch.zeros(rows, dtype=torch.long))
    tokens, logps = sample(logits.expand(rows, -1), temperature=temperature, keys=keys,
                           steps=torch.zeros(rows, dtype=torch.long))
    probs = torch.softmax(logits[0].double() / temperature, -1)
    assert chi_square_p(tokens, probs) > 1e-3
    assert torch.allclose(logps, torch.log_softmax(logits[0] / temperature, -1)[tokens], atol=1e-6)


@pytest.mark.parametrize("block", [1, 2, 3, 7, 1024])
def test_inverse_cdf_blocks_and_zero_weights(block):
    """Two-level selection with the vocabulary split into whole blocks and a partial tail block
    (7 entries), zero weights anywhere (also a block's first / last entry and a whole block):
    chi-square against the normalised weights; zero weights never drawn."""
    w = torch.tensor([0.0, 0.3, 0.0, 0.0, 1e-3, 0.9, 0.25])
    rows = 30000
    u = row_uniforms(row_keys(2, torch.arange(rows), torch.zeros(rows, dtype=torch.long)),
                     torch.zeros(rows, dtype=torch.long))
    tokens = inverse_cdf(w.expand(rows, -1), u, block=block)
    assert chi_square_p(tokens, w.double()) > 1e-3
    # Extremes of u: the first and the last non-zero entries.
    edge = inverse_cdf(w.expand(2, -1), torch.tensor([1e-300, 1 - 2**-53], dtype=torch.float64), block=block)
    assert edge.tolist() == [1, 6]


def test_nan_logits_still_give_in_range_tokens():
    """A diverged model (NaN logits) must not crash the sampler: the token is in range, the log-prob NaN
    (the trainer skips non-finite steps)."""
    logits = torch.full((3, 64), float("nan"))
    logits[1, :5] = 0.0  # partly NaN
    keys = row_keys(0, torch.arange(3), torch.zeros(3, dtype=torch.long))
    tokens, logps = sample(logits, temperature=1.0, keys=keys, steps=torch.zeros(3, dtype=torch.long))
    assert ((tokens >= 0) & (tokens < 64)).all() and torch.isnan(logps[0])


def test_samples_do_not_depend_on_the_batch():
    """A row's token depends on its own (key, step, logits) only: the same rows sampled alone, in a
    different order, or inside a bigger batch with other rows (and a real-size vocabulary, several
    inverse-CDF blocks) give the same tokens and log-probs, bit for bit."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 151936, generator=g) * 3
    logits[:, 151665:] = float("-inf")  # TP padding columns
    keys = row_keys(9, torch.arange(6), torch.arange(6) % 2)
    steps = torch.tensor([0, 1, 2, 3, 40, 41])
    for kwargs in (dict(), dict(top_k=50), dict(top_p=0.9, min_p=0.01)):
        tokens, logps = sample(logits, temperature=0.9, keys=keys, steps=steps, **kwargs)
        for r in range(6):
            t, lp = sample(logits[r:r + 1], temperature=0.9, keys=keys[r:r + 1], steps=steps[r:r + 1], **kwargs)
            assert (t.item(), lp.item()) == (tokens[r].item(), logps[r].item()), (kwargs, r)
        perm = torch.tensor([5, 3, 1, 0, 2, 4])
        others = torch.randn(58, 151936, generator=g)
        big_t, big_lp = sample(torch.cat([logits[perm], others]), temperature=0.9,
                               keys=torch.cat([keys[perm], row_keys(1, torch.arange(58), torch.zeros(58).long())]),
                               steps=torch.cat([steps[perm], torch.zeros(58).long()]), **kwargs)
        assert torch.equal(big_t[:6], tokens[perm]) and torch.equal(big_lp[:6], logps[perm]), kwargs
        assert (tokens < 151665).all()


@pytest.mark.parametrize("kwargs,dist", [
    (dict(), [0.5, 0.2, 0.15, 0.1, 0.05]),
    (dict(top_k=2), [0.5 / 0.7, 0.2 / 0.7, 0, 0, 0]),
    (dict(top_p=0.75), [0.5 / 0.85, 0.2 / 0.85, 0.15 / 0.85, 0, 0]),
])
def test_samples_follow_the_filtered_distribution(kwargs, dist):
    rows = 20000
    keys = row_keys(11, torch.arange(rows), torch.zeros(rows, dtype=torch.long))
    tokens, logps = sample(LOGITS.expand(rows, -1), temperature=1.0, keys=keys,
                           steps=torch.zeros(rows, dtype=torch.long), **kwargs)
    freq = torch.bincount(tokens, minlength=5).float() / rows
    for f, p in zip(freq.tolist(), dist):
        assert abs(f - p) <= 4 * math.sqrt(max(p * (1 - p), 1e-9) / rows) + 1e-9, (freq, dist)
    # log-prob: the unfiltered tempered distribution, whatever the filters.
    assert torch.allclose(logps, PROBS[0].log()[tokens], atol=1e-6)


def test_temperature_scales_logprobs_and_greedy_ignores_it():
    keys = row_keys(0, torch.arange(3), torch.zeros(3, dtype=torch.long))
    tokens, logps = sample(LOGITS.expand(3, -1), temperature=0.5, keys=keys, steps=torch.zeros(3, dtype=torch.long))
    assert torch.allclose(logps, torch.log_softmax(LOGITS[0] / 0.5, -1)[tokens], atol=1e-6)
    logits = torch.tensor([[0.0, 3.0, 1.0, float("-inf")]])
    tokens, logps = sample(logits, temperature=0.0)
    assert tokens.tolist() == [1]
    assert torch.allclose(logps, torch.log_softmax(logits, -1)[0, 1:2])


def test_padded_vocab_is_never_sampled():
    logits = torch.tensor([[0.0, 0.0, float("-inf"), float("-inf")]]).expand(4000, -1)
    keys = row_keys(1, torch.arange(4000), torch.zeros(4000, dtype=torch.long))
    tokens, _ = sample(logits, temperature=2.0, keys=keys, steps=torch.zeros(4000, dtype=torch.long))
    assert set(tokens.tolist()) == {0, 1}


def decode(ids: list[int]) -> str:
    return "".join(f"<{i}>" for i in ids)


def test_stop_checker_rules():
    c = StopChecker(SamplingParams(max_tokens=5, stop_token_ids=[9], stop=["<3><4"]), [2], decode)
    assert c.check([1]) is None
    assert c.check([1, 2]) == ("stop", None)  # EOS
    assert c.check([1, 9]) == ("stop", 9)
    assert c.check([1, 3, 4]) == ("stop", "<3><4")
    assert c.check([1, 1, 1, 1, 1]) == ("length", None)
    assert c.text([1, 3, 4], "<3><4") == "<1>"
    keep = StopChecker(SamplingParams(stop=["<3><4"], include_stop_str_in_output=True), [], decode)
    assert keep.text([1, 3, 4], "<3><4") == "<1><3><4"
    assert StopChecker(SamplingParams(ignore_eos=True), [2], None).check([2]) is None
    with pytest.raises(ValueError, match="tokenizer"):
        StopChecker(SamplingParams(stop=["x"]), [], None)


def test_sampling_params_check_and_from_config():
    from mindrl.config.schema import SamplingConfig

    bad = SamplingParams(n=0, temperature=-1, top_p=1.5, top_k=-2, min_p=2, max_tokens=0, stop=[""])
    assert len(bad.check()) == 7
    assert SamplingParams().check() == []
    p = SamplingParams.from_config(SamplingConfig(temperature=0.6, stop=["</answer>"]), n=8, seed=3)
    assert (p.temperature, p.stop, p.n, p.seed, p.max_tokens) == (0.6, ["</answer>"], 8, 3, 1024)


def test_registry_and_protocol():
    assert ROLLOUT_ENGINES == {"builtin": BuiltinRolloutEngine, "vllm": VllmRolloutEngine}
    for cls in ROLLOUT_ENGINES.values():
        for name in ("generate", "load_weights", "sleep", "wake_up"):
            assert callable(getattr(cls, name)), (cls, name)
    outs = [RolloutOutput(p, s, [1], [2], [-0.1], "length") for p in range(2) for s in range(3)]
    assert [[(o.prompt_index, o.sample_index) for o in g] for g in group_outputs(outs, 3)] == \
        [[(0, 0), (0, 1), (0, 2)], [(1, 0), (1, 1), (1, 2)]]
    assert isinstance(object.__new__(BuiltinRolloutEngine), RolloutEngine)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
def test_vllm_adapter_without_vllm_names_the_package():
    with pytest.raises(ImportError, match="'vllm'"):
        ROLLOUT_ENGINES["vllm"]("/some/model")
