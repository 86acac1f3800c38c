"""Export a checkpoint as a Hugging Face ``LlamaForCausalLM`` directory that transformers loads offline.

    python -m model.export work/train/<key>/checkpoints/step-0000200 exported/

Writes ``model.safetensors``, ``config.json``, ``generation_config.json``, and the tokenizer (``tokenizer.json``
plus ``tokenizer_config.json`` and ``special_tokens_map.json``) so that ``AutoModelForCausalLM`` and
``AutoTokenizer`` load it with ``local_files_only=True``. The GPT's parameter names are Llama's (under ``model.``),
its RMSNorm and rotary layout are Llama's, so the tensors are written as they are. A model with an option Llama
cannot express (QK-norm, ReLU², parameter-free norms, a logit soft-cap) is refused with the reasons.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from model.gpt import GPTConfig


class ExportError(ValueError):
    """A checkpoint that cannot be written as a Llama model; the message says why."""


def llama_config(cfg: GPTConfig, bos_id: int) -> dict[str, Any]:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model, "intermediate_size": cfg.mlp_hidden, "num_hidden_layers": cfg.depth,
        "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim,
        "hidden_act": "silu", "max_position_embeddings": cfg.seq_len, "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta, "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "rope_scaling": None, "attention_bias": False, "mlp_bias": False, "attention_dropout": 0.0,
        "tie_word_embeddings": cfg.tie_embeddings, "bos_token_id": bos_id, "eos_token_id": bos_id,
        "initializer_range": cfg.init_std, "torch_dtype": "float32", "use_cache": True,
    }


def export(checkpoint: Path, out_dir: Path) -> Path:
    """Write the Hugging Face directory for ``checkpoint`` (a checkpoints/step-N directory); returns out_dir."""
    from safetensors.torch import save_file

    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    try:
        state = json.loads((checkpoint / "state.json").read_text())
    except FileNotFoundError:
        raise ExportError(f"{checkpoint} is not a checkpoint: state.json is missing") from None
    cfg = GPTConfig(**state["model"])
    problems = cfg.export_problems()
    if problems:
        raise ExportError(f"{checkpoint.name} cannot be exported as LlamaForCausalLM: " + "; ".join(problems))
    data_dir = Path(state["data_dir"])
    manifest = json.loads((data_dir / "_tokens.json").read_text())
    tokenizer = data_dir / manifest["tokenizer"]
    if not tokenizer.is_file():
        raise ExportError(f"the tokenizer {tokenizer} of the training data is gone")
    weights = torch.load(checkpoint / "model.pt", map_location="cpu")
    tensors = {}
    for name, tensor in weights.items():
        if name == "lm_head.weight":
            if cfg.tie_embeddings:
                continue  # Llama ties it to model.embed_tokens.weight itself
            tensors[name] = tensor.contiguous()
        else:
            tensors[f"model.{name}"] = tensor.contiguous()
    separator = int(manifest["separator_id"])
    spec = json.loads(tokenizer.read_text())
    bos = next(t["content"] for t in spec["added_tokens"] if t["id"] == separator)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out_dir.name}-", dir=out_dir.parent))
    try:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        _json(tmp / "config.json", llama_config(cfg, separator))
        _json(tmp / "generation_config.json", {"bos_token_id": separator, "eos_token_id": separator})
        shutil.copyfile(tokenizer, tmp / "tokenizer.json")
        _json(tmp / "tokenizer_config.json", {
            "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": bos, "eos_token": bos,
            "add_bos_token": False, "add_eos_token": False, "model_max_length": cfg.seq_len,
            "clean_up_tokenization_spaces": False})
        _json(tmp / "special_tokens_map.json", {"bos_token": bos, "eos_token": bos})
        _json(tmp / "crucible.json", {"checkpoint": str(checkpoint.resolve()), "step": state["step"],
                                      "tokens": state["tokens"], "tokenizer_sha256": manifest["tokenizer_sha256"],
                                      "val": state.get("val")})
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=1) + "\n")


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 3:
        sys.exit("usage: python -m model.export CHECKPOINT_DIR OUT_DIR")
    print(export(Path(sys.argv[1]), Path(sys.argv[2])))
