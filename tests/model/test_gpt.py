"""model/gpt.py: causality, the loss in nats, overfitting, gradient accumulation, the depth dial, export limits."""
import math

import pytest
import torch
import torch.nn.functional as F

from model.gpt import GPT, GPTConfig, IGNORE


def tiny(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=97, depth=2, seq_len=32, **kw))


@pytest.mark.parametrize("options", [{}, {"n_kv_heads": 1, "n_heads": 2}, {"qk_norm": True, "activation": "relu2",
                                                                          "logit_softcap": 15.0}])
def test_changing_future_tokens_leaves_earlier_logits_unchanged(options):
    model = tiny(**options).eval()
    x = torch.randint(0, 97, (2, 24))
    y = x.clone()
    y[:, 13:] = torch.randint(0, 97, (2, 11))
    with torch.no_grad():
        a, b = model(x), model(y)
    assert torch.allclose(a[:, :13], b[:, :13], atol=1e-6)  # position i sees j <= i only
    assert not torch.allclose(a[:, 13:], b[:, 13:], atol=1e-3)


def test_the_loss_is_mean_cross_entropy_in_nats_and_skips_ignored_targets():
    model = tiny().eval()
    x = torch.randint(0, 97, (2, 16))
    t = torch.randint(0, 97, (2, 16))
    t[1, 10:] = IGNORE
    with torch.no_grad():
        logits = model(x)
        loss = model(x, t)
        per = model(x, t, reduction="none")
    logp = F.log_softmax(logits, dim=-1)
    keep = t != IGNORE
    nll = -logp[keep].gather(-1, t[keep].unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(loss, nll.mean(), atol=1e-5)
    assert torch.all(per[~keep] == 0) and torch.allclose(per[keep], nll, atol=1e-5)
    assert math.isclose(math.exp(loss.item()), math.exp(nll.mean().item()), rel_tol=1e-5)  # perplexity


def test_a_tiny_model_overfits_one_small_batch():
    model = tiny()
    x = torch.randint(0, 97, (4, 32))
    y = torch.roll(x, -1, dims=1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        loss = model(x, y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 4.0 and loss.item() < 0.05


def test_gradient_accumulation_equals_the_large_batch():
    x = torch.randint(0, 97, (8, 32))
    y = torch.randint(0, 97, (8, 32))
    big, acc = tiny(), tiny()
    big(x, y).backward()
    for part in range(2):
        (acc(x[part * 4:(part + 1) * 4], y[part * 4:(part + 1) * 4]) / 2).backward()
    for (name, p), q in zip(big.named_parameters(), acc.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6, rtol=1e-4), name


def test_one_depth_dial_sets_the_sizes_and_init_is_scaled_by_depth():
    cfg = GPTConfig(vocab_size=50304, depth=12)
    assert (cfg.d_model, cfg.n_heads, cfg.head_dim, cfg.mlp_hidden) == (768, 12, 64, 2048)
    assert GPTConfig(vocab_size=10, depth=4, d_model=384).n_heads == 6  # an explicit override wins
    model = GPT(GPTConfig(vocab_size=97, depth=8, d_model=256, seq_len=16))
    out = model.layers[0].self_attn.o_proj.weight.std().item()
    q = model.layers[0].self_attn.q_proj.weight.std().item()
    assert abs(out / q - 1 / 4) < 0.05  # residual projections: 0.02 / sqrt(2 * depth)
    assert not any(n.endswith("bias") for n, _ in model.named_parameters())


def test_tied_embeddings_share_one_matrix():
    model = tiny(tie_embeddings=True)
    assert model.lm_head.weight is model.embed_tokens.weight
    assert model.num_params() == tiny().num_params() - 97 * 128


def test_options_llama_cannot_express_are_named():
    assert GPTConfig(vocab_size=10).export_problems() == []
    problems = GPTConfig(vocab_size=10, qk_norm=True, activation="relu2", norm_weight=False,
                         logit_softcap=15.0).export_problems()
    assert [p.split()[0].rstrip(":") for p in problems] == ["qk_norm", "activation", "norm_weight", "logit_softcap"]
