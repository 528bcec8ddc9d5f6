"""load_model on a .gguf path: converted once into the cache, equal to the embedded model's conversion."""

from __future__ import annotations

import pytest
import torch

from innerpissa.models import gguf_folder, load_model, smollm2_gguf_path


def test_missing_gguf_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(str(tmp_path / "nope.gguf"))


@pytest.mark.smollm2
def test_a_gguf_path_loads_like_the_embedded_model(smollm2, tmp_path, monkeypatch):
    model_ref, tok = smollm2
    monkeypatch.setenv("INNERPISSA_CACHE", str(tmp_path / "cache"))
    gguf = smollm2_gguf_path()
    model, tok2 = load_model(str(gguf))
    folder = gguf_folder(gguf)  # the second call finds the converted folder (no second conversion)
    assert folder.parent == tmp_path / "cache" and (folder / "config.json").exists()
    assert model.config.name_or_path == str(gguf)  # adapters record the file the user named
    ids = tok("The weather today is", return_tensors="pt")["input_ids"]
    assert tok2("The weather today is", return_tensors="pt")["input_ids"].tolist() == ids.tolist()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, model_ref(ids).logits)


def test_model_identity_sees_weights_not_adapters_or_paths():
    """The identity result caches are keyed by: the same for an attached (unmerged) adapter or a moved model,
    different for other weights (a replaced model folder) or a weight changed in place; memoised."""
    from innerpissa.adapter import attach, detach_adapter
    from innerpissa.adapter.config import AdapterConfig
    from innerpissa.models import model_identity, tiny_random_model, tokenizer_identity

    model, tok = load_model("tiny-random")
    ident = model_identity(model)
    assert model_identity(tiny_random_model(seed=1)[0])["weights_sha256"] != ident["weights_sha256"]
    assert model_identity(tiny_random_model(seed=0)[0]) == ident
    model.config.name_or_path = "/somewhere/else"
    attach(model, AdapterConfig(r=4))
    assert model_identity(model) == ident  # the adapter's own tensors are not the base model
    detach_adapter(model, merge_at=1.0)
    merged = model_identity(model)
    assert merged["weights_sha256"] != ident["weights_sha256"]  # merged weights compute something else
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    assert model_identity(model)["weights_sha256"] != merged["weights_sha256"]  # seen through the memo
    assert tokenizer_identity(tok) == tokenizer_identity(load_model("tiny-random")[1])
