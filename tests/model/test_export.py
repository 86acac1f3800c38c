"""model/export.py and `crucible export`: the Hugging Face directory loads with the same logits, the tokenizer adds
BOS, and an export never deletes what it did not write."""
import json
import os
import stat
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from flows.cli import main
from model.export import ExportError, export
from model.gpt import GPT, GPTConfig
from tests.model.test_train import finish, run_args, train


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from tests.tasks.test_tokenize import tokenize

    tmp = tmp_path_factory.mktemp("export")
    data, _, _ = tokenize(tmp / "tokens")
    finish(train(run_args(tmp, data, max_steps=4, eval_every=0)))
    return tmp / "run" / "checkpoints" / "step-0000004"


def test_the_export_loads_in_transformers_with_the_same_logits_and_bos_first(tmp_path, checkpoint):
    transformers = pytest.importorskip("transformers")
    from tasks.tokenizer import load_encoder

    hf_dir = export(checkpoint, tmp_path / "hf")
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, local_files_only=True, dtype=torch.float32)
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)
    text = "Page 7: the harbour master counted 21 boats, and the river rose again."
    state = json.loads((checkpoint / "state.json").read_text())
    data = Path(state["data_dir"])
    _, ours = load_encoder(data / "_reduce" / "tokenizer.json", "tiktoken")
    ids = tok(text)["input_ids"]
    # Trained and scored with <|bos|> (id 0) first, so a stock tokenizer call (what lm_eval's hf model does) adds it.
    assert ids == [0] + ours.encode_batch([text])[0]
    assert tok(text, add_special_tokens=False)["input_ids"] == ids[1:]
    assert json.loads((hf_dir / "tokenizer_config.json").read_text())["add_bos_token"] is True
    gpt = GPT(GPTConfig(**state["model"]))
    gpt.load_state_dict(torch.load(checkpoint / "model.pt"))
    x = torch.tensor([ids])
    with torch.no_grad():
        assert (gpt.eval()(x) - model.eval()(x).logits).abs().max().item() < 1e-4


def test_the_export_is_readable_by_others(tmp_path, checkpoint):
    old = os.umask(0o022)
    try:
        out = export(checkpoint, tmp_path / "hf")
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {0o644}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp or old dirs left


def test_a_model_llama_cannot_express_is_refused(tmp_path, checkpoint):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for p in checkpoint.iterdir():
        (ckpt / p.name).write_bytes(p.read_bytes())
    state = json.loads((ckpt / "state.json").read_text())
    state["model"]["qk_norm"] = True
    (ckpt / "state.json").write_text(json.dumps(state))
    with pytest.raises(ExportError, match="qk_norm"):
        export(ckpt, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()


def user_dir(tmp_path) -> Path:
    target = tmp_path / "project"
    (target / "work").mkdir(parents=True)
    (target / "work" / "warehouse.duckdb").write_bytes(b"precious")
    (target / "notes.txt").write_text("mine")
    (target / "config.json").write_text("{}")  # a name an export also writes
    return target


@pytest.mark.parametrize("force", [False, True])
def test_a_directory_holding_other_files_is_never_touched(tmp_path, checkpoint, force):
    target = user_dir(tmp_path)
    before = sorted((p.relative_to(target), p.read_bytes() if p.is_file() else None) for p in target.rglob("*"))
    with pytest.raises(ExportError, match="refusing to export into .*left as it is"):
        export(checkpoint, target, force=force)
    assert sorted((p.relative_to(target), p.read_bytes() if p.is_file() else None)
                  for p in target.rglob("*")) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["project"]


def test_the_current_and_home_directories_are_refused_even_with_force(tmp_path, checkpoint, monkeypatch):
    cwd = user_dir(tmp_path)
    monkeypatch.chdir(cwd)
    for target in (Path("."), cwd, cwd.parent, Path("/")):
        with pytest.raises(ExportError, match="current directory, the home directory"):
            export(checkpoint, target, force=True)
    monkeypatch.setenv("HOME", str(cwd / "work"))
    with pytest.raises(ExportError, match="home directory"):
        export(checkpoint, cwd / "work", force=True)
    assert (cwd / "work" / "warehouse.duckdb").read_bytes() == b"precious"


def test_an_earlier_export_is_replaced_only_with_force(tmp_path, checkpoint):
    out = export(checkpoint, tmp_path / "hf")
    first = (out / "model.safetensors").read_bytes()
    with pytest.raises(ExportError, match="already holds an export.*--force"):
        export(checkpoint, out)
    assert export(checkpoint, out, force=True) == out
    assert (out / "model.safetensors").read_bytes() == first
    (out / "extra.bin").write_bytes(b"x")  # someone added a file: no longer only ours
    with pytest.raises(ExportError, match="extra.bin"):
        export(checkpoint, out, force=True)
    assert (out / "extra.bin").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert export(checkpoint, empty) == empty


def test_cli_export_refuses_the_current_directory(tmp_path, checkpoint, monkeypatch):
    cwd = user_dir(tmp_path)
    monkeypatch.chdir(cwd)
    result = CliRunner().invoke(main, ["export", str(checkpoint), ".", "--force"])
    assert result.exit_code != 0
    assert "refusing to export" in result.output
    assert (cwd / "work" / "warehouse.duckdb").exists() and (cwd / "notes.txt").exists()
    result = CliRunner().invoke(main, ["export", str(checkpoint), str(tmp_path / "hf")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "hf" / "model.safetensors").is_file()
