"""export.merged: the merged stand-in computes what base + adapter computes; AFM is refused."""
import json
import shutil

import pytest
import torch

from export.merged import MergeError, main as merged_main, merge_run


def test_merged_logits_equal_peft_logits(tiny_sft_run, tmp_path):
    from transformers import AutoModelForCausalLM

    from train.models import load_with_adapter, read_run
    out = merge_run(tiny_sft_run, tmp_path / "merged")
    assert (out / "model.safetensors").exists() and (out / "tokenizer_config.json").exists()
    base = read_run(tiny_sft_run)["base_model"]["name_or_path"]
    peft_model, tok, _ = load_with_adapter(base, tiny_sft_run)
    merged = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    ids = tok("Task: Plan a trip to Paris", return_tensors="pt")
    with torch.no_grad():
        a = peft_model(**ids).logits
        b = merged(**ids).logits
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # The adapter is really in there: the merged model differs from the bare base.
    bare, _, _ = load_with_adapter(base, None)
    with torch.no_grad():
        assert not torch.allclose(bare(**ids).logits, b, atol=1e-4)


def test_afm_base_is_refused(tiny_sft_run, tmp_path, capsys):
    fake = tmp_path / "afm-run"
    shutil.copytree(tiny_sft_run, fake)
    run = json.loads((fake / "run.json").read_text())
    run["base_model"].update(stand_in=False, architecture="AFMTextV7ForCausalLM")
    (fake / "run.json").write_text(json.dumps(run))
    with pytest.raises(MergeError, match="Apple's Foundation Model.*export.fmadapter"):
        merge_run(fake, tmp_path / "out")
    assert merged_main(["--adapter", str(fake), "--out", str(tmp_path / "out")]) == 2
    assert "refused" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
