"""Saving, loading and exporting adapters.

Our format is a folder with `adapter.safetensors` (trainable tensors and, for InnerPiSSA, the frozen U, S,
V, so loading needs no SVD and is exact) and `adapter_config.json` (format version, the adapter `kind`:
innerpissa or lora (LoRA scaled by c), config, base-model identity, every wrapped module's name, shape and a
weight fingerprint, plus free-form `extra` such as calibration results). One save and one load serve both kinds.
`export_lora` writes the adapter at one coefficient as a standard PEFT LoRA folder, `export_merged` the model
with the adapter merged at a coefficient as a plain Hugging Face model folder; both through
`fileio.atomic_folder` (written beside the target and renamed into place as a unit).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from innerpissa.adapter.config import AdapterConfig
from innerpissa.adapter.kinds import KINDS
from innerpissa.adapter.model import (
    _components,
    _float_coeffs,
    _layers_or_raise,
    _set_module,
    adapter_config,
    adapter_layers,
    adapter_names,
    base_linear,
    target_names,
)
from innerpissa.adapter.stack import DEFAULT_ADAPTER, check_adapter_name
from innerpissa.errors import CorruptAdapterError
from innerpissa.fileio import (
    atomic_folder,
    atomic_save_safetensors,
    atomic_write_json,
    describe_leftovers,
    first_file_on_path,
)

FORMAT = "innerpissa-adapter"
FORMAT_VERSION = 1
WEIGHTS_NAME = "adapter.safetensors"
CONFIG_NAME = "adapter_config.json"
#: the embedded model's upstream checkpoint (its weights here are the dequantised Q4_1 GGUF of it)
EXPORT_FILES = ("adapter_model.safetensors", "adapter_config.json", "innerpissa_export.json", "README.md")
SMOLLM2_UPSTREAM = "HuggingFaceTB/SmolLM2-135M-Instruct"


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------- identity checks


def base_model_identity(model: nn.Module) -> dict[str, Any]:
    cfg = getattr(model, "config", None)
    get = (lambda k: getattr(cfg, k, None)) if cfg is not None else (lambda k: None)
    return {
        "name_or_path": get("name_or_path") or getattr(model, "name_or_path", None),
        "model_type": get("model_type"),
        "architectures": get("architectures"),
        "num_hidden_layers": get("num_hidden_layers"),
        "hidden_size": get("hidden_size"),
        "vocab_size": get("vocab_size"),
    }


@torch.no_grad()
def weight_fingerprint(w: torch.Tensor) -> list[float]:
    """(sum, L2 norm) of a weight in float64: cheap evidence that U, S, V belong to this very matrix."""
    w64 = w.detach().to(torch.float64)
    return [float(w64.sum()), float(w64.norm())]


# ---------------------------------------------------------------- save / load


def save_adapter(model: nn.Module, path: str | os.PathLike, extra: dict[str, Any] | None = None,
                 coeff_range: tuple[float, float] | None = None, name: str | None = None) -> Path:
    """Save adapter `name` (None: the only one attached) to folder `path`, as a unit: the folder is written
    beside it and renamed into place, so an existing adapter is replaced whole or not at all. The JSON records
    the tensor file's sha256 (checked on load) and, when given, the coefficient range it was trained on."""
    layers = _layers_or_raise(model, name)
    kind = next((k for k, kd in KINDS.items() if all(isinstance(ly, kd.layer) for ly in layers.values())), None)
    if kind is None:
        raise TypeError(f"save_adapter writes one adapter kind ({', '.join(KINDS)}); this model carries other "
                        "steerable layers")
    if any(layer.merged_coeff is not None for layer in layers.values()):
        raise RuntimeError("adapter is merged into the weights; unmerge_adapter(model) before saving")
    out = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    modules = []
    for name, layer in layers.items():
        for t in KINDS[kind].tensors:
            v = getattr(layer, t)
            if v is not None:
                if not bool(torch.isfinite(v).all()):
                    raise ValueError(f"adapter tensor {name}.{t} holds NaN or infinite values; not saving it "
                                     "(the training diverged: retrain with a lower learning rate)")
                tensors[f"{name}.{t}"] = v
        d_out, d_in = layer.base_layer.weight.shape
        modules.append({"name": name, "d_out": d_out, "d_in": d_in,
                        "weight_fingerprint": weight_fingerprint(layer.base_layer.weight)})
    cfg = next(iter(layers.values())).cfg
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "config": cfg.to_dict(),
        "base_model": base_model_identity(model),
        "modules": modules,
        "extra": extra or {},
    }
    if coeff_range is not None:
        meta["coeff_range"] = [float(min(coeff_range)), float(max(coeff_range))]
    with atomic_folder(out, owned=(WEIGHTS_NAME, CONFIG_NAME)) as tmp:
        atomic_save_safetensors(tensors, tmp / WEIGHTS_NAME, metadata={"format": FORMAT})
        meta["weights_sha256"] = file_sha256(tmp / WEIGHTS_NAME)
        atomic_write_json(tmp / CONFIG_NAME, meta)
    return out


def read_adapter_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON metadata of a saved adapter, with a clear error when the folder is not one."""
    p = Path(path)
    cfg_file = p / CONFIG_NAME
    if not cfg_file.exists():
        raise FileNotFoundError(f"{p} is not an innerpissa adapter folder (no {CONFIG_NAME}); "
                                f"give the folder written by save_adapter or `innerpissa train`{describe_leftovers(p)}")
    try:
        meta = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptAdapterError(f"corrupt adapter file {cfg_file} ({e}); re-save or re-train the adapter") from None
    if not isinstance(meta, dict):
        raise CorruptAdapterError(f"corrupt adapter file {cfg_file} (not a JSON object); re-save or re-train")
    if meta.get("format") != FORMAT:
        hint = " (it looks like a PEFT LoRA folder: load it with peft.PeftModel)" if "peft_type" in meta else ""
        raise ValueError(f"{cfg_file} is not an innerpissa adapter{hint}")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{cfg_file} has format_version {meta['format_version']}, newer than this innerpissa "
                         f"reads ({FORMAT_VERSION}); upgrade innerpissa")
    missing = [k for k in ("config", "modules") if k not in meta]
    if missing:
        raise CorruptAdapterError(f"corrupt adapter file {cfg_file} (no {missing} entry); re-save or re-train")
    _check_meta_fields(cfg_file, meta)
    return meta


def _bad_field(cfg_file: Path, field: str, value: Any, expected: str) -> CorruptAdapterError:
    shown = repr(value) if len(repr(value)) < 60 else repr(value)[:57] + "..."
    return CorruptAdapterError(f"corrupt adapter file {cfg_file}: field {field} is {shown}, expected {expected}; "
                               "re-save or re-train the adapter")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _check_meta_fields(cfg_file: Path, meta: dict[str, Any]) -> None:
    """Every field `load_adapter` reads has the type `save_adapter` writes; a wrong one is named."""
    kind = meta.get("kind", "innerpissa")
    if kind not in KINDS:
        raise _bad_field(cfg_file, "kind", kind, f"one of {sorted(KINDS)} (a newer innerpissa may know it)")
    if not isinstance(meta["config"], dict):
        raise _bad_field(cfg_file, "config", meta["config"], "an object of adapter settings")
    modules = meta["modules"]
    if not isinstance(modules, list) or not modules:
        raise _bad_field(cfg_file, "modules", modules, "a non-empty list of module records")
    for i, m in enumerate(modules):
        if not isinstance(m, dict):
            raise _bad_field(cfg_file, f"modules[{i}]", m, "an object with name, d_out, d_in, weight_fingerprint")
        checks = [("name", isinstance(m.get("name"), str), "a module name (string)"),
                  ("d_out", _is_int(m.get("d_out")) and m.get("d_out") > 0, "a positive integer"),
                  ("d_in", _is_int(m.get("d_in")) and m.get("d_in") > 0, "a positive integer"),
                  ("weight_fingerprint", isinstance(m.get("weight_fingerprint"), list)
                   and len(m["weight_fingerprint"]) == 2 and all(_is_num(x) for x in m["weight_fingerprint"]),
                   "a list of two finite numbers")]
        for key, ok, expected in checks:
            if not ok:
                raise _bad_field(cfg_file, f"modules[{i}].{key}", m.get(key), expected)
    rng = meta.get("coeff_range")
    if rng is not None and not (isinstance(rng, list) and len(rng) == 2 and all(_is_num(x) for x in rng)):
        raise _bad_field(cfg_file, "coeff_range", rng, "a list of two finite numbers")
    if meta.get("base_model") is not None and not isinstance(meta["base_model"], dict):
        raise _bad_field(cfg_file, "base_model", meta["base_model"], "an object")
    sha = meta.get("weights_sha256")
    if sha is not None and not (isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha)):
        raise _bad_field(cfg_file, "weights_sha256", sha, "64 lowercase hex digits")


def _config_of(path: Path, meta: dict[str, Any]) -> AdapterConfig:
    """The saved AdapterConfig, with a wrong-typed or invalid field named as part of the file."""
    try:
        return AdapterConfig.from_dict(meta["config"])
    except (ValueError, TypeError) as e:
        raise CorruptAdapterError(f"corrupt adapter file {Path(path) / CONFIG_NAME}: config: {e}; re-save or "
                                  "re-train the adapter") from None


def _load_tensors(path: Path, meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The adapter's tensors, checked against the sha256 its JSON records."""
    file = Path(path) / WEIGHTS_NAME
    if not file.exists():
        raise CorruptAdapterError(f"adapter folder {path} has no {WEIGHTS_NAME}; re-save or re-train the adapter")
    want = meta.get("weights_sha256")
    if want is None:
        raise CorruptAdapterError(
            f"adapter file {Path(path) / CONFIG_NAME} has no weights_sha256, so {WEIGHTS_NAME} cannot be checked "
            "(every adapter save_adapter writes records it; an edited file drops it): re-save or re-train the "
            f"adapter, or, if you trust the file, add \"weights_sha256\": \"<sha256sum of {WEIGHTS_NAME}>\"")
    if file_sha256(file) != want:
        raise CorruptAdapterError(f"corrupt adapter file {file}: its sha256 differs from the one recorded in "
                                  f"{CONFIG_NAME}; re-save or re-train the adapter")
    try:
        return load_file(str(file))
    except Exception as e:  # safetensors raises its own error type for a damaged header
        raise CorruptAdapterError(f"corrupt adapter file {file} ({e}); re-save or re-train the adapter") from None


def _check_tensors(path: Path, meta: dict[str, Any], cfg: AdapterConfig, kind: str,
                   tensors: dict[str, torch.Tensor]) -> None:
    """Exactly the tensors `save_adapter` writes for these modules and this config, each in its dtype."""
    file = Path(path) / WEIGHTS_NAME
    dtype = torch.float32 if kind == "lora" else getattr(torch, cfg.dtype)
    optional = {"theta_v": cfg.rotate_v, "theta_u": cfg.rotate_u, "delta": cfg.s_mode != "none"}
    expected = {f"{m['name']}.{t}" for m in meta["modules"] for t in KINDS[kind].tensors if optional.get(t, True)}
    extra = sorted(set(tensors) - expected)
    if extra:
        raise CorruptAdapterError(f"corrupt adapter file {file}: unexpected tensor(s) {extra[:3]} that no module of "
                                  f"{CONFIG_NAME} owns; re-save or re-train the adapter")
    missing = sorted(expected - set(tensors))
    if missing:
        raise CorruptAdapterError(f"corrupt adapter file {file}: tensor(s) {missing[:3]} are missing; re-save or "
                                  "re-train the adapter")
    for key in sorted(tensors):
        if tensors[key].dtype != dtype:
            raise CorruptAdapterError(f"corrupt adapter file {file}: tensor {key} is {tensors[key].dtype}, but the "
                                      f"adapter's dtype is {dtype}; re-save or re-train the adapter")


@torch.no_grad()
def _check_basis(path: Path, model: nn.Module, modules: list[str], tensors: dict[str, torch.Tensor]) -> None:
    """U, S, V must be singular triplets of this model's weight: U^T W V = diag(S). Checked on one random
    probe vector per module (one matrix-vector product, the cost of a token's forward), which holds for the
    exact, randomized and data-chosen SVDs alike up to rounding; an edited basis fails by O(1)."""
    g = torch.Generator().manual_seed(0)
    for name in modules:
        w = base_linear(model.get_submodule(name)).weight
        u, s_, v = (tensors[f"{name}.{t}"].to(w.device, torch.float32) for t in ("U", "S", "V"))
        x = torch.randn(s_.shape[0], generator=g).to(w.device)
        want = s_ * x
        got = u.T @ (w.to(torch.float32) @ (v @ x))
        err = float((got - want).norm() / want.norm().clamp(min=1e-12))
        if not err < 1e-2:
            raise CorruptAdapterError(f"corrupt adapter file {Path(path) / WEIGHTS_NAME}: the saved singular vectors "
                                      f"of {name} are not those of this model's weight (|U^T W V - S| / |S| = "
                                      f"{err:.2g} on a probe); re-save or re-train the adapter, or pass strict=False")


def _check_compatible(model: nn.Module, path: Path, meta: dict[str, Any], cfg: AdapterConfig, strict: bool,
                      name: str = DEFAULT_ADAPTER) -> None:
    """Refuse a model of another type, or an adapter already attached under `name` with another configuration."""
    saved_type = (meta.get("base_model") or {}).get("model_type")
    here_type = getattr(getattr(model, "config", None), "model_type", None)
    if strict and saved_type and here_type and saved_type != here_type:
        raise ValueError(f"adapter at {path} was trained on a {saved_type!r} model, this one is {here_type!r}; "
                         f"load the base model it was trained on ({meta['base_model'].get('name_or_path')}), "
                         "or pass strict=False")
    if name in adapter_names(model):
        try:
            here = adapter_config(model, name).to_dict()
        except TypeError as e:
            raise ValueError(f"cannot load the adapter at {path}: {e}; detach_adapter(model) first") from None
        saved = cfg.to_dict()
        diff = [f"{k}: {here.get(k)!r} attached vs {saved.get(k)!r} saved" for k in saved if here.get(k) != saved.get(k)]
        if diff:
            raise ValueError(f"the model already carries an adapter with another configuration than the one at "
                             f"{path} ({'; '.join(diff)}); detach_adapter(model) first so load_adapter attaches "
                             "the saved configuration")


@torch.no_grad()
def load_adapter(model: nn.Module, path: str | os.PathLike, strict: bool = True,
                 name: str = DEFAULT_ADAPTER) -> nn.Module:
    """Attach (if needed) and load a saved adapter into `model` under `name`; returns the model.

    Load several adapters under different names to steer them together (`steer(model, {name: c, ...})`).

    Fails naming the first module that differs when the model is not the one the adapter was trained on
    (missing module, other shape, or, with `strict`, other weights).
    """
    adapter_name = check_adapter_name(name)
    meta = read_adapter_meta(path)
    cfg = _config_of(Path(path), meta)
    _check_compatible(model, Path(path), meta, cfg, strict, adapter_name)
    saved = {m["name"]: m for m in meta["modules"]}
    try:
        names = target_names(model, cfg)
    except (ValueError, TypeError) as e:
        raise ValueError(f"adapter at {path} does not fit this model: {e}") from e
    base = (meta.get("base_model") or {})
    hint = (f"; it was trained on {base.get('name_or_path')!r} ({base.get('num_hidden_layers')} layers): load that "
            "model (--model on the command line)") if base.get("name_or_path") else ""
    for name in saved:
        if name not in names:
            raise ValueError(f"adapter at {path} wraps module {name!r}, which this model's blocks selected by the "
                             f"adapter's config do not include (they are e.g. {names[:3]}){hint}")
    for name in names:
        if name not in saved:
            raise ValueError(f"this model has module {name!r} selected by the adapter's config, but the saved "
                             f"adapter has no weights for it{hint or '; was it trained on a deeper or different model?'}")
        mod = model.get_submodule(name)
        w = base_linear(mod).weight
        shape = tuple(w.shape)
        if shape != (saved[name]["d_out"], saved[name]["d_in"]):
            raise ValueError(f"module {name} has shape {shape} here but "
                             f"({saved[name]['d_out']}, {saved[name]['d_in']}) in the adapter at {path}")
        if strict:
            fp, ref = weight_fingerprint(w), saved[name]["weight_fingerprint"]
            if abs(fp[1] - ref[1]) > 1e-4 * max(1.0, abs(ref[1])) or abs(fp[0] - ref[0]) > 1e-3 * max(1.0, ref[1]):
                raise ValueError(f"module {name} has other weights than the model the adapter was trained on "
                                 f"(fingerprint {fp} vs {ref}); load the same base model, or pass strict=False")
    tensors = _load_tensors(Path(path), meta)
    kind = meta.get("kind", "innerpissa")
    _check_tensors(Path(path), meta, cfg, kind, tensors)
    if strict and kind == "innerpissa":
        _check_basis(Path(path), model, names, tensors)
    if adapter_name not in adapter_names(model):
        KINDS[kind].attach(model, cfg, adapter_name, False)
    for mname, layer in adapter_layers(model, adapter_name).items():
        for t in KINDS[kind].tensors:
            dst = getattr(layer, t)
            key = f"{mname}.{t}"
            if dst is None:
                if key in tensors:
                    raise ValueError(f"adapter file has {key} but the attached adapter has no {t}; config mismatch")
                continue
            if key not in tensors:
                raise ValueError(f"adapter file {path} lacks tensor {key}")
            if tuple(tensors[key].shape) != tuple(dst.shape):
                raise ValueError(f"{key} has shape {tuple(tensors[key].shape)} in the file, {tuple(dst.shape)} here")
            dst.copy_(tensors[key].to(dst.device, dst.dtype))
        layer._cache = None  # InnerPiSSA's cached rotation
    if meta.get("coeff_range"):
        ranges = dict(getattr(model, "_innerpissa_coeff_range", None) or {})
        ranges[adapter_name] = tuple(meta["coeff_range"])
        model._innerpissa_coeff_range = ranges
    return model


# ---------------------------------------------------------------- LoRA export


@torch.no_grad()
def export_lora(model: nn.Module, path: str | os.PathLike, c: float | Mapping[str, float],
                dtype: torch.dtype = torch.float32, base_model_name_or_path: str | None = None) -> Path:
    """Write the adapter at coefficient `c` as a standard PEFT LoRA folder.

    Delta W(c) = U K(c)^T V^T has rank <= r, so B = U K(c)^T, A = V^T with lora_alpha = r (scaling 1) is
    exact. `peft.PeftModel.from_pretrained(base_model, path)` then reproduces the adapter at c, and engines
    that serve LoRA (vLLM, llama.cpp after conversion) serve it unchanged.

    With several adapters give `c` by name, e.g. `{"honesty": 1.0, "sentiment": -0.5}`: the folder is ONE
    LoRA of that combination (adapters at 0 or not named are left out). Where adapters share a module their
    deltas add, so B and A are concatenated along the rank, B = [B_1 B_2], A = [A_1; A_2], B A = Delta_1 +
    Delta_2: that module's rank is the sum of the adapters' ranks. `r` is the largest module rank; modules
    with another rank are listed in PEFT's `rank_pattern` and `alpha_pattern` (scaling 1 everywhere).
    """
    from peft import LoraConfig

    coeffs = _float_coeffs(model, c, "export_lora")
    if isinstance(c, Mapping):
        coeffs = {n: v for n, v in coeffs.items() if v != 0}
        if not coeffs:
            raise ValueError("every coefficient given to export_lora is 0, so the LoRA would be empty (the base "
                             "model); give at least one non-zero coefficient")
    factors: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for mname, adapter, layer in _components(model):
        if adapter not in coeffs:
            continue
        if not hasattr(layer, "lora_factors"):
            raise TypeError(f"adapter {adapter!r} has {type(layer).__name__} layers, which cannot be written as a LoRA")
        b, a = layer.lora_factors(coeffs[adapter])
        factors.setdefault(mname, []).append((b.to(dtype), a.to(dtype)))
    tensors, ranks = {}, {}
    for mname, fs in factors.items():
        b, a = torch.cat([f[0] for f in fs], dim=1), torch.cat([f[1] for f in fs], dim=0)
        tensors[f"base_model.model.{mname}.lora_A.weight"] = a
        tensors[f"base_model.model.{mname}.lora_B.weight"] = b
        ranks[mname] = a.shape[0]
    r = max(ranks.values())
    pattern = {re.escape(m): k for m, k in ranks.items() if k != r}
    base_id = base_model_name_or_path or base_model_identity(model)["name_or_path"]
    note = None
    if base_id == "smollm2":  # the embedded model: name its upstream hub id, which PEFT can resolve
        base_id = SMOLLM2_UPSTREAM
        note = (f"trained on innerpissa's embedded SmolLM2, the dequantised Q4_1 GGUF of {SMOLLM2_UPSTREAM}; "
                "for exact results load the base from innerpissa's converted cache folder")
    lcfg = LoraConfig(r=r, lora_alpha=r, target_modules=sorted(factors), lora_dropout=0.0, bias="none",
                      rank_pattern=pattern, alpha_pattern=dict(pattern), task_type="CAUSAL_LM",
                      base_model_name_or_path=base_id)
    cfg_dict = lcfg.to_dict()
    cfg_dict = {k: (sorted(v) if isinstance(v, set) else v) for k, v in cfg_dict.items()}
    cfg_dict["peft_type"] = "LORA"
    cfg_dict["task_type"] = "CAUSAL_LM"
    out = Path(path)
    info = {"coefficient": None if isinstance(c, Mapping) else float(c), "coefficients": coeffs, "rank": r,
            "module_ranks": {m: ranks[m] for m in sorted(ranks)}, "modules": sorted(factors), "base_model": base_id}
    if note:
        info["note"] = note
    with atomic_folder(out, owned=EXPORT_FILES) as tmp:
        atomic_save_safetensors(tensors, tmp / "adapter_model.safetensors", metadata={"format": "pt"})
        atomic_write_json(tmp / "adapter_config.json", cfg_dict)
        atomic_write_json(tmp / "innerpissa_export.json", info)
    return out


# ---------------------------------------------------------------- merged export

#: the export's own record (also in LoRA exports); `"kind": "merged"` marks a merged-model folder
EXPORT_INFO = "innerpissa_export.json"
#: names that show a folder holds an adapter (ours or PEFT's) or a training run (train.runfolder.RUN_FILES)
_ADAPTER_FILES = (CONFIG_NAME, WEIGHTS_NAME, "adapter_model.safetensors")
_RUN_FILES = ("checkpoint", "metrics.jsonl", "summary.json", "adapter", "lora.safetensors")


def _is_merged_export(folder: Path) -> bool:
    try:
        return json.loads((folder / EXPORT_INFO).read_text(encoding="utf-8")).get("kind") == "merged"
    except (OSError, ValueError, AttributeError):
        return False


def check_export_out(path: str | os.PathLike, merged: bool = True) -> list[str]:
    """Refuse an export target that is (or lies below) a file, holds an adapter or a training run, or lies
    inside an adapter folder; checked before any model is loaded. Returns the names an earlier merged export
    there owns (replaced as a unit), [] otherwise."""
    out = Path(os.path.abspath(path))
    blocker = first_file_on_path(out)
    if blocker is not None:
        raise FileExistsError(f"--out {path}: {blocker} is a file, not a folder; give a folder path")
    for parent in out.parents:
        if (parent / CONFIG_NAME).is_file() or (parent / "adapter_model.safetensors").is_file():
            raise FileExistsError(f"--out {path} lies inside the adapter folder {parent}; give a folder outside it")
    if not out.is_dir():
        return []
    names = sorted(p.name for p in out.iterdir())
    if merged and _is_merged_export(out):
        return names
    adapter = [n for n in names if n in _ADAPTER_FILES]
    if merged and adapter:
        raise FileExistsError(f"--out {path} holds an adapter ({', '.join(adapter)}); the export would replace it: "
                              "give a new folder")
    run = [n for n in names if n in _RUN_FILES]
    if run:
        raise FileExistsError(f"--out {path} holds a training run ({', '.join(run)}); the export would replace it: "
                              "give a new folder")
    if merged and names:
        raise FileExistsError(f"--out {path} holds other files ({', '.join(names[:5])}); a merged export replaces "
                              "its folder whole: give a new or empty folder")
    return []


@torch.no_grad()
def export_merged(model: nn.Module, tokenizer, path: str | os.PathLike, c: float | Mapping[str, float],
                  base_model_name_or_path: str | None = None) -> Path:
    """Write `model` with its adapter(s) merged at `c` as a plain Hugging Face model folder (`save_pretrained`
    of the model and the tokenizer, plus `innerpissa_export.json`), which any engine loads without innerpissa.

    Written as a unit through `fileio.atomic_folder`: a crash leaves the previous export (or nothing), never
    half a `model.safetensors`; files get the umask's mode. `path` may be new, empty, or an earlier merged
    export (replaced whole); a folder holding an adapter, a run or other files is refused. Warns when |c|
    exceeds twice the range the adapter was trained on (as `steer` does) and refuses merged weights that are
    not finite. `model` is left as it was: the wrapped weights are restored exactly and the adapters stay.
    """
    owned = check_export_out(path, merged=True)
    coeffs = _float_coeffs(model, c, "export_merged")  # finite; warns beyond twice the trained range
    comps = [(m, a, comp) for m, a, comp in _components(model) if a in coeffs]
    if any(comp.merged_coeff is not None for _, _, comp in _components(model)):
        raise RuntimeError("an adapter is already merged into the weights; unmerge_adapter(model) first")
    modules = sorted({m for m, _, _ in comps})
    wrapped = {m: model.get_submodule(m) for m in modules}
    weights = {m: base_linear(w).weight for m, w in wrapped.items()}
    saved = {m: w.detach().clone() for m, w in weights.items()}
    base_id = base_model_name_or_path or base_model_identity(model)["name_or_path"]
    info: dict[str, Any] = {"kind": "merged", "coefficient": None if isinstance(c, Mapping) else float(c),
                            "coefficients": coeffs, "modules": modules, "base_model": base_id}
    if base_id == "smollm2":
        info["note"] = (f"the embedded SmolLM2 is the dequantised Q4_1 GGUF of {SMOLLM2_UPSTREAM}; this folder holds "
                        "those fp32 weights with the adapter merged")
    try:
        for m, a, comp in comps:
            weights[m].add_(comp.delta_weight(coeffs[a]).to(weights[m].dtype))
        bad = [m for m, w in weights.items() if not bool(torch.isfinite(w).all())]
        if bad:
            raise ValueError(f"merging at c={c} makes the weights of {bad[0]} non-finite; use a smaller --c")
        for m in modules:  # a plain model for save_pretrained: the merged nn.Linear at each wrapped path
            _set_module(model, m, base_linear(wrapped[m]))
        try:
            with atomic_folder(path, owned=owned) as tmp:
                model.save_pretrained(tmp)
                if tokenizer is not None:
                    tokenizer.save_pretrained(tmp)
                atomic_write_json(tmp / EXPORT_INFO, info)
        finally:
            for m in modules:
                _set_module(model, m, wrapped[m])
    finally:
        for m, w in weights.items():
            w.copy_(saved[m])
    return Path(path)


# ---------------------------------------------------------------- one LoRA per coefficient


def export_folder_name(c: float) -> str:
    """The folder of the LoRA exported at coefficient c among several: `c+1`, `c-0.5`, `c+0.25`."""
    return f"c{float(c):+g}"


def export_loras(model: nn.Module, path: str | os.PathLike, coeffs, dtype: torch.dtype = torch.float32,
                 base_model_name_or_path: str | None = None) -> dict[float, Path]:
    """One standard PEFT LoRA per coefficient, `path/c+1`, `path/c-0.5`, ... (each written whole or not at all
    by `export_lora`): the adapter acts through a rotation of c, so a LoRA's scale cannot stand in for c;
    an engine serving several strengths loads one LoRA per strength. Returns {c: folder}."""
    cs = [float(c) for c in coeffs]
    if not cs:
        raise ValueError("export_loras needs at least one coefficient")
    if len(set(cs)) != len(cs):
        raise ValueError(f"coefficients repeat: {cs}; give each once")
    if any(c == 0 for c in cs):
        raise ValueError("c = 0 is the base model (an empty LoRA); leave it out and serve the base model")
    root = Path(path)
    for c in cs:  # every target checked before anything is written (check_export_out: no run, no adapter)
        check_export_out(root / export_folder_name(c), merged=False)
    return {c: export_lora(model, root / export_folder_name(c), c, dtype, base_model_name_or_path) for c in cs}
