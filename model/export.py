"""Export a checkpoint as a Hugging Face ``LlamaForCausalLM`` directory that transformers loads offline.

    python -m model.export work/train/<key>/checkpoints/step-0000200 exported/ [--force]

Writes ``model.safetensors``, ``config.json``, ``generation_config.json``, and the tokenizer (``tokenizer.json``
plus ``tokenizer_config.json`` and ``special_tokens_map.json``) so that ``AutoModelForCausalLM`` and
``AutoTokenizer`` load it with ``local_files_only=True``. The GPT's parameter names are Llama's (under ``model.``),
its RMSNorm and rotary layout are Llama's, so the tensors are written as they are. A model with an option Llama
cannot express (QK-norm, ReLU², parameter-free norms, a logit soft-cap) is refused with the reasons.

The model was trained and is scored with ``<|bos|>`` before every document, so the tokenizer adds it: the
exported ``tokenizer.json`` gets a template post-processor and ``tokenizer_config.json`` says ``add_bos_token``,
and a stock ``lm_eval --model hf`` run scores the way Crucible's own evaluation does.

An export never destroys what it did not write. The files are written into a temp directory beside the target and
renamed into place. An existing target must be empty, or, with ``force``, hold nothing but an earlier export
(the files below and the ``crucible.json`` marker); the current directory, the home directory, the filesystem
root and any directory that contains one of them are refused outright.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import torch

from model.gpt import GPTConfig


class ExportError(ValueError):
    """A checkpoint that cannot be written as a Llama model, or a target it may not write; the message says why."""


MARKER = "crucible.json"
# Every file an export writes; a directory holding anything else is not ours to replace.
EXPORT_FILES = frozenset({"model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
                          "tokenizer_config.json", "special_tokens_map.json", MARKER})


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


def check_target(out_dir: Path, force: bool) -> bool:
    """Refuse a target an export may not write; returns whether it holds an earlier export to replace."""
    target = out_dir.absolute()
    resolved = target.resolve()
    guarded = {Path.cwd().resolve(), Path.home().resolve(), Path(resolved.anchor)}
    if any(resolved == g or resolved in g.parents for g in guarded):
        raise ExportError(f"refusing to export into {out_dir}: it is (or contains) the current directory, the "
                          "home directory or the filesystem root; name a new directory such as exported/")
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise ExportError(f"refusing to export into {out_dir}: it exists and is not a directory")
    if not target.exists():
        return False
    names = {p.name for p in target.iterdir()}
    if not names:
        return False
    foreign = sorted(names - EXPORT_FILES)
    if foreign or MARKER not in names or any(not (target / n).is_file() or (target / n).is_symlink()
                                             for n in names):
        what = f"{len(foreign)} files that no export writes ({', '.join(foreign[:5])})" if foreign \
            else "files without an export's crucible.json"
        raise ExportError(f"refusing to export into {out_dir}: it holds {what}; it is left as it is. "
                          "Name a new or empty directory")
    if not force:
        raise ExportError(f"{out_dir} already holds an export ({_describe(target / MARKER)}); "
                          "pass --force to replace it")
    return True


def _describe(marker: Path) -> str:
    try:
        info = json.loads(marker.read_text())
        return f"step {info['step']} of {info['checkpoint']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "unreadable crucible.json"


def export(checkpoint: Path, out_dir: Path, force: bool = False) -> Path:
    """Write the Hugging Face directory for ``checkpoint`` (a checkpoints/step-N directory); returns out_dir.

    ``force`` replaces an earlier export in out_dir; nothing else is ever deleted (see the module docstring).
    """
    from safetensors.torch import save_file

    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    check_target(out_dir, force)
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

    spec["post_processor"] = bos_template(bos, separator)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out_dir.name}-", dir=out_dir.parent))
    try:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        _json(tmp / "config.json", llama_config(cfg, separator))
        _json(tmp / "generation_config.json", {"bos_token_id": separator, "eos_token_id": separator})
        (tmp / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False))
        _json(tmp / "tokenizer_config.json", {
            "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": bos, "eos_token": bos,
            "add_bos_token": True, "add_eos_token": False, "model_max_length": cfg.seq_len,
            "clean_up_tokenization_spaces": False})
        _json(tmp / "special_tokens_map.json", {"bos_token": bos, "eos_token": bos})
        _json(tmp / MARKER, {"checkpoint": str(checkpoint.resolve()), "step": state["step"],
                             "tokens": state["tokens"], "tokenizer_sha256": manifest["tokenizer_sha256"],
                             "val": state.get("val")})
        _make_readable(tmp)
        # Re-checked at the last moment: the target may have changed while the weights were written.
        if check_target(out_dir, force):
            old = out_dir.parent / f".old-{out_dir.name}-{uuid.uuid4().hex[:8]}"
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            for name in EXPORT_FILES:
                (old / name).unlink(missing_ok=True)
            old.rmdir()
        else:
            if out_dir.exists():
                out_dir.rmdir()  # empty, checked above; rmdir refuses anything else
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def bos_template(bos: str, bos_id: int) -> dict[str, Any]:
    """A tokenizers post-processor that puts ``bos`` before every sequence (and before each of a pair)."""
    return {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}}}


def _make_readable(directory: Path) -> None:
    """mkdtemp makes 0700 and the files follow the umask; an export is shared, so give it the umask's modes."""
    mask = os.umask(0)
    os.umask(mask)
    directory.chmod(0o777 & ~mask)
    for path in directory.iterdir():
        path.chmod(0o666 & ~mask)


def _json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=1) + "\n")


if __name__ == "__main__":
    import sys

    args = [a for a in sys.argv[1:] if a != "--force"]
    if len(args) != 2:
        sys.exit("usage: python -m model.export CHECKPOINT_DIR OUT_DIR [--force]")
    try:
        print(export(Path(args[0]), Path(args[1]), force="--force" in sys.argv))
    except ExportError as err:
        sys.exit(f"error: {err}")
