"""`innerpissa export --c -1 -0.5 0.5 1`: one standard PEFT LoRA per coefficient, each equal to the adapter at
its c in PEFT, with an adapter_config that vLLM and llama.cpp take (what their loaders read and refuse)."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import randomize
from safetensors.torch import load_file

import innerpissa as ip
from innerpissa.adapter import AdapterConfig

pytestmark = pytest.mark.usefixtures("one_thread")

COEFFS = (-1.0, -0.5, 0.5, 1.0)
#: the projections of Llama-style blocks that vLLM's LoRA layers and llama.cpp's tensor map both cover
ENGINE_MODULES = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from innerpissa.cli import main

    root = tmp_path_factory.mktemp("export")
    model, _ = ip.load_model("tiny-random")
    ip.attach(model, AdapterConfig(r=8, target_modules=("q_proj", "v_proj", "o_proj", "down_proj")))
    randomize(ip.adapter_parameters(model), std=0.5)
    ip.save_adapter(model, root / "adapter", coeff_range=(-1.0, 1.0))
    main(["export", "--adapter", str(root / "adapter"), "--model", "tiny-random", "--c", *map(str, COEFFS),
          "--out", str(root / "loras")])
    return root


def test_one_folder_per_coefficient_reproduces_the_adapter_in_peft(exported):
    from peft import PeftModel

    model, tok = ip.load_model("tiny-random")
    ip.load_adapter(model, exported / "adapter")
    batch = tok(["Describe a street.", "Is it ever OK to lie?"], return_tensors="pt", padding=True)
    folders = sorted(p.name for p in (exported / "loras").iterdir())
    assert folders == ["c+0.5", "c+1", "c-0.5", "c-1"]
    for c in COEFFS:
        folder = exported / "loras" / ip.adapter.io.export_folder_name(c)
        assert json.loads((folder / "innerpissa_export.json").read_text())["coefficient"] == c
        with torch.no_grad(), ip.steer(model, c):
            want = model(**batch).logits
        base, _ = ip.load_model("tiny-random")
        peft = PeftModel.from_pretrained(base, folder).eval()
        with torch.no_grad():
            got = peft(**batch).logits
        assert torch.allclose(got, want, atol=2e-5), (c, float((got - want).abs().max()))
    # a LoRA scale is not c: the c = -1 LoRA is not the c = +1 LoRA negated
    a, b = (load_file(exported / "loras" / n / "adapter_model.safetensors") for n in ("c+1", "c-1"))
    k = next(x for x in a if x.endswith("lora_B.weight"))
    assert not torch.allclose(a[k], -b[k], atol=1e-4)


def test_exported_config_holds_only_what_vllm_and_llama_cpp_accept(exported):
    for folder in (exported / "loras").iterdir():
        cfg = json.loads((folder / "adapter_config.json").read_text())
        tensors = load_file(folder / "adapter_model.safetensors")
        # vLLM's PEFTHelper: r, lora_alpha and target_modules required; no DoRA, no modules_to_save, no bias
        assert cfg["peft_type"] == "LORA" and cfg["task_type"] == "CAUSAL_LM"
        assert isinstance(cfg["r"], int) and 0 < cfg["r"] <= 512 and cfg["lora_alpha"] == cfg["r"]
        assert not cfg.get("use_dora") and not cfg.get("modules_to_save") and cfg.get("bias") == "none"
        assert not cfg.get("use_rslora") and not cfg.get("layers_to_transform")
        # llama.cpp's converter reads one lora_alpha and each tensor's own rank: no per-module patterns
        assert not cfg.get("rank_pattern") and not cfg.get("alpha_pattern")
        mods = {m.rsplit(".", 1)[-1] for m in cfg["target_modules"]}
        assert mods <= ENGINE_MODULES, mods
        for name, t in tensors.items():
            assert name.startswith("base_model.model.model.layers.") and name.endswith((".lora_A.weight",
                                                                                       ".lora_B.weight"))
            assert t.dtype == torch.float32 and cfg["r"] in t.shape
        assert len(tensors) == 2 * len(cfg["target_modules"])


def test_export_refuses_repeated_or_zero_coefficients(exported):
    from innerpissa.cli import main

    with pytest.raises(SystemExit, match="repeat"):
        main(["export", "--adapter", str(exported / "adapter"), "--model", "tiny-random", "--c", "1", "1",
              "--out", str(exported / "x")])
    with pytest.raises(SystemExit, match="base model"):
        main(["export", "--adapter", str(exported / "adapter"), "--model", "tiny-random", "--c", "0", "1",
              "--out", str(exported / "x")])
    with pytest.raises(SystemExit, match="--merged writes one model"):
        main(["export", "--adapter", str(exported / "adapter"), "--model", "tiny-random", "--c", "-1", "1",
              "--merged", "--out", str(exported / "x")])
    assert not (exported / "x").exists()
