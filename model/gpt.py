"""A decoder-only GPT in plain torch, nanochat-style, whose default exports exactly to Hugging Face Llama.

Pre-norm RMSNorm (with a weight, as ``LlamaRMSNorm``), rotary position embeddings in the Llama convention (the
head dimension split in halves, ``rotate_half``), causal scaled-dot-product attention (flash on GPU), optional
grouped-query attention, a gated-SiLU MLP, and no biases anywhere. One dial, ``depth``, sets the width
(``64 * depth``), the heads (width / 64) and the MLP size (8/3 of the width, rounded up to 64); each can be set
explicitly instead.

Options that Llama cannot express (``export_problems`` names them): QK-norm, ReLU² MLP, parameter-free norms and a
logit soft-cap.

Loss is cross-entropy in nats over targets that are not ``IGNORE`` (-1); perplexity is exp(mean NLL).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

IGNORE = -1


@dataclass
class GPTConfig:
    vocab_size: int
    depth: int = 4
    d_model: int | None = None        # default 64 * depth
    n_heads: int | None = None        # default d_model // 64 (head dim 64)
    n_kv_heads: int | None = None     # default n_heads; fewer is grouped-query attention
    mlp_hidden: int | None = None     # default 8/3 * d_model rounded up to a multiple of 64
    seq_len: int = 1024               # the longest context (rotary tables are built for it)
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    init_std: float = 0.02
    # not exportable to Llama:
    qk_norm: bool = False
    activation: Literal["swiglu", "relu2"] = "swiglu"
    norm_weight: bool = True
    logit_softcap: float | None = None

    def __post_init__(self) -> None:
        self.d_model = self.d_model or 64 * self.depth
        self.n_heads = self.n_heads or max(1, self.d_model // 64)
        self.n_kv_heads = self.n_kv_heads or self.n_heads
        self.mlp_hidden = self.mlp_hidden or 64 * math.ceil(self.d_model * 8 / 3 / 64)
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError(f"d_model {self.d_model} must split into {self.n_heads} heads of an even size")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def export_problems(self) -> list[str]:
        """Why this model cannot be exported as LlamaForCausalLM (empty when it can)."""
        problems = []
        if self.qk_norm:
            problems.append("qk_norm: Llama has no norm on queries and keys")
        if self.activation != "swiglu":
            problems.append(f"activation {self.activation}: Llama's MLP is gated SiLU")
        if not self.norm_weight:
            problems.append("norm_weight = false: Llama's RMSNorm has a weight (export could write ones, but the "
                            "model would then train differently from what it claims)")
        if self.logit_softcap:
            problems.append("logit_softcap: Llama does not cap logits")
        return problems


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in float32 as LlamaRMSNorm does; ``weight=False`` makes it parameter-free."""

    def __init__(self, dim: int, eps: float, weight: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if weight else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        x = x.to(dtype)
        return x * self.weight if self.weight is not None else x


def rotary_tables(seq_len: int, head_dim: int, theta: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of shape (seq_len, head_dim), the frequencies repeated over both halves (Llama's layout)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim))
    freqs = torch.outer(torch.arange(seq_len, device=device).float(), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (batch, heads, time, head_dim)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        hd = cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_heads * hd, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * hd, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * hd, cfg.d_model, bias=False)
        self.q_norm = RMSNorm(hd, cfg.norm_eps, cfg.norm_weight) if cfg.qk_norm else None
        self.k_norm = RMSNorm(hd, cfg.norm_eps, cfg.norm_weight) if cfg.qk_norm else None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self._qkv(x, cos, sin)
        # position i attends to j <= i
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           enable_gqa=self.cfg.n_kv_heads != self.cfg.n_heads)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1))

    def _qkv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, ...]:
        b, t, _ = x.shape
        hd = self.cfg.head_dim
        q = self.q_proj(x).view(b, t, self.cfg.n_heads, hd).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.cfg.n_kv_heads, hd).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.cfg.n_kv_heads, hd).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v

    def with_prefix(self, xp: torch.Tensor, xt: torch.Tensor, rope_p: tuple[torch.Tensor, torch.Tensor],
                    rope_t: tuple[torch.Tensor, torch.Tensor], ref: torch.Tensor,
                    tail_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Attention of causal prefixes (prefixes, P) and of tails (tails, T), each of which sees the keys of
        prefix ``ref[tail]`` and its own that ``tail_mask`` (tails, 1, T, P + T) allows: one layer of
        ``GPT.hidden_with_prefix``."""
        gqa, width = self.cfg.n_kv_heads != self.cfg.n_heads, self.cfg.n_heads * self.cfg.head_dim
        qp, kp, vp = self._qkv(xp, *rope_p)
        out_p = xp
        if xp.shape[1]:
            yp = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True, enable_gqa=gqa)
            out_p = self.o_proj(yp.transpose(1, 2).reshape(xp.shape[0], xp.shape[1], width))
        if xt.shape[1] == 0:
            return out_p, xt
        qt, kt, vt = self._qkv(xt, *rope_t)
        yt = F.scaled_dot_product_attention(qt, torch.cat((kp[ref], kt), 2), torch.cat((vp[ref], vt), 2),
                                            attn_mask=tail_mask, enable_gqa=gqa)
        return out_p, self.o_proj(yt.transpose(1, 2).reshape(xt.shape[0], xt.shape[1], width))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.activation = cfg.activation
        if cfg.activation == "swiglu":
            self.gate_proj = nn.Linear(cfg.d_model, cfg.mlp_hidden, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.mlp_hidden, bias=False)
        self.down_proj = nn.Linear(cfg.mlp_hidden, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation == "swiglu":
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        return self.down_proj(F.relu(self.up_proj(x)).square())


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps, cfg.norm_weight)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps, cfg.norm_weight)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))

    def with_prefix(self, xp: torch.Tensor, xt: torch.Tensor, rope_p: tuple[torch.Tensor, torch.Tensor],
                    rope_t: tuple[torch.Tensor, torch.Tensor], ref: torch.Tensor,
                    tail_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ap, at = self.self_attn.with_prefix(self.input_layernorm(xp), self.input_layernorm(xt), rope_p, rope_t, ref,
                                            tail_mask)
        xp, xt = xp + ap, xt + at
        return xp + self.mlp(self.post_attention_layernorm(xp)), xt + self.mlp(self.post_attention_layernorm(xt))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps, cfg.norm_weight)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        cos, sin = rotary_tables(cfg.seq_len, cfg.head_dim, cfg.rope_theta)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Normal(0, init_std) weights; the projections into the residual stream scaled by 1/sqrt(2 * depth)."""
        std = self.cfg.init_std
        for name, p in self.named_parameters():
            if name.endswith("layernorm.weight") or name.endswith("norm.weight"):
                nn.init.ones_(p)
            elif name.endswith("o_proj.weight") or name.endswith("down_proj.weight"):
                nn.init.normal_(p, 0.0, std / math.sqrt(2 * self.cfg.depth))
            else:
                nn.init.normal_(p, 0.0, std)

    def num_params(self, embeddings: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n if embeddings else n - self.embed_tokens.weight.numel()

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token: 6 x the non-embedding parameters plus attention's 12 * depth * d_model * T."""
        t = seq_len or self.cfg.seq_len
        return 6 * self.num_params(embeddings=False) + 12 * self.cfg.depth * self.cfg.d_model * t

    def hidden(self, idx: torch.Tensor) -> torch.Tensor:
        """The final normalised hidden states (batch, time, d_model): what ``head`` turns into logits. Token i is
        at position i and sees j <= i."""
        t = idx.shape[1]
        if t > self.cfg.seq_len:
            raise ValueError(f"a sequence of {t} tokens is longer than the model's {self.cfg.seq_len}")
        cos, sin = self.cos[:t], self.sin[:t]
        x = self.embed_tokens(idx)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.norm(x)

    def hidden_with_prefix(self, prefix: torch.Tensor, tail: torch.Tensor, tail_positions: torch.Tensor,
                           ref: torch.Tensor, tail_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Final hidden states of prefixes shared by several sequences and of those sequences' own tokens (how
        model/core.py scores an item's choices): each ``prefix`` row (prefixes, P) runs causally from position 0
        (a shorter one right-padded); each ``tail`` row (tails, T), at ``tail_positions``, continues prefix
        ``ref[row]``: it reads that prefix's keys and values, as from a KV cache, and sees the keys ``tail_mask``
        (tails, 1, T, P + T; True where allowed) lets it: the prefix's real tokens and its own earlier ones. The
        prefix is computed once for all its tails, and no attention is spent between tails."""
        p = prefix.shape[1]
        if p > self.cfg.seq_len or (tail.shape[1] and int(tail_positions.max()) >= self.cfg.seq_len):
            raise ValueError(f"a position past the model's {self.cfg.seq_len}")
        rope_p = self.cos[:p], self.sin[:p]
        rope_t = self.cos[tail_positions].unsqueeze(1), self.sin[tail_positions].unsqueeze(1)
        xp, xt = self.embed_tokens(prefix), self.embed_tokens(tail)
        for layer in self.layers:
            xp, xt = layer.with_prefix(xp, xt, rope_p, rope_t, ref, tail_mask)
        return self.norm(xp), self.norm(xt)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Logits of hidden states (any leading shape), soft-capped when the model is."""
        logits = self.lm_head(h)
        if self.cfg.logit_softcap:
            cap = self.cfg.logit_softcap
            logits = cap * torch.tanh(logits / cap)
        return logits

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                reduction: Literal["mean", "sum", "none"] = "mean") -> torch.Tensor:
        """Logits (batch, time, vocab) without targets; with targets the cross-entropy in nats (``reduction``
        "none" gives it per position, 0 where the target is IGNORE)."""
        logits = self.head(self.hidden(idx))
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1),
                               ignore_index=IGNORE, reduction=reduction)
        return loss.view(targets.shape) if reduction == "none" else loss
