"""The real `steering-vectors` and `repeng` packages as external references (METHOD section 8), when they
import next to our stack (transformers 5, numpy 2, pandas 3).

Findings, checked with the versions pinned in the `external` extra:
- steering-vectors 0.12.2 declares `transformers<5`, so a plain `pip install` would downgrade transformers;
  installed with `pip install --no-deps steering-vectors==0.12.2` plus `scikit-learn` (imported by its
  aggregators at package import) it imports and trains/applies vectors on transformers 5 unchanged.
- repeng 0.4.0 declares `numpy<2`; with numpy 2 its import fails (`np.float_` was removed in NumPy 2.0). In a
  separate environment with numpy 1.26.4 it trains and applies a ControlVector on transformers 5.24 / torch
  2.13, but pandas 3 (ours) requires numpy>=2.0.2, hence "numpy<2 and pandas<3": it cannot share this
  environment, and the project does not downgrade numpy or pandas.
`external_status()` re-checks this at run time, so a comparison records why a peer is missing.

The real repeng therefore runs in its own virtualenv, as a subprocess (baseline `repeng_external`):
`train_repeng_external` saves the model and tokenizer with `save_pretrained` and the pairs to a temporary
folder, runs `repeng_runner.py` (shipped in this package) with that environment's Python, which calls
`repeng.ControlVector.train` unchanged, and reads the unit vectors back; they are applied with our hooks
(`VectorSteerer`: state c adds c * v to each block's output, as repeng's `set_control(vector, c)`).
The Python is the `python` argument, else `$INNERPISSA_REPENG_PYTHON`; create it with `REPENG_VENV_HINT`.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import json
import os
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn

from innerpissa.baselines.common import SignedSteerer, resolve_layers
from innerpissa.baselines.vectors import NARROW_COEFFS, SteeringVectors
from innerpissa.data.pairs import ContrastivePair
from innerpissa.steering import tensor_digest

#: distribution name -> (import name, pinned version, how to install it without touching our stack)
EXTERNAL_PACKAGES = {
    "steering-vectors": ("steering_vectors", "0.12.2",
                         "install with: pip install --no-deps steering-vectors==0.12.2 'scikit-learn>=1.4'"),
    "repeng": ("repeng", "0.4.0", "repeng 0.4.0 needs numpy<2 (it uses np.float_), so it cannot run next to numpy 2; "
               "use baseline repeng_external with its own virtualenv"),
}
REPENG_PYTHON_ENV = "INNERPISSA_REPENG_PYTHON"
REPENG_VENV_HINT = ("python3 -m venv ~/.venv-repeng && ~/.venv-repeng/bin/pip install torch==2.13.0 && "
                    "~/.venv-repeng/bin/pip install repeng==0.4.0 'numpy<2' transformers==5.24.0, then "
                    f"export {REPENG_PYTHON_ENV}=~/.venv-repeng/bin/python")
REPENG_RUNNER = Path(__file__).with_name("repeng_runner.py")


def _check(dist: str) -> str:
    module, pin, how = EXTERNAL_PACKAGES[dist]
    try:
        version = md.version(dist)
    except md.PackageNotFoundError:
        return f"not installed ({how})"
    try:
        importlib.import_module(module)
    except Exception as e:  # any import-time failure is the finding, e.g. AttributeError from numpy 2
        return f"installed {version} but import fails: {type(e).__name__}: {e}"
    note = "" if version == pin else f" (tested with {pin})"
    return f"ok {version}{note}"


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "absent"


def external_status() -> dict[str, str]:
    """Per external package: 'ok <version>' or why it cannot be used here (checked now, not cached)."""
    versions = {name: _version(name) for name in ("transformers", "numpy", "pandas", "torch")}
    status = {dist: _check(dist) for dist in EXTERNAL_PACKAGES}
    try:
        status["repeng_external"] = f"ok {repeng_python()}"
    except FileNotFoundError as e:
        status["repeng_external"] = f"unavailable: {e}"
    status["environment"] = ", ".join(f"{k} {v}" for k, v in versions.items())
    return status


def steering_vectors_available() -> bool:
    return _check("steering-vectors").startswith("ok")


def _require_steering_vectors():
    status = _check("steering-vectors")
    if not status.startswith("ok"):
        raise ImportError(f"steering-vectors is unavailable: {status}")
    import steering_vectors

    return steering_vectors


class SteeringVectorsSteerer(SignedSteerer):
    """The `steering-vectors` package's own extraction and hooks, on our pairs and our model.

    It reads the block outputs at the last token (its default `read_token_index=-1`). `aggregator="mean"`
    (default) is its CAA mean difference, directly comparable to our `mean_diff`; `aggregator="pca"` is its
    uncentered PCA, unit norm by design, rescaled here to the mean difference's norm per layer so that the
    coefficient sweeps share a unit. State c is the package's `SteeringVector.apply(multiplier=c)`.
    """

    name = "steering_vectors"

    def __init__(self, model: nn.Module, tokenizer, pairs: Sequence[ContrastivePair],
                 layers: Sequence[int] | None = None, aggregator: str = "mean", batch_size: int = 16,
                 coeffs: Sequence[float] | None = None):
        sv = _require_steering_vectors()
        if aggregator not in ("mean", "pca"):
            raise ValueError(f"aggregator must be 'mean' or 'pca', got {aggregator!r}")
        self.model, self.aggregator = model, aggregator
        self.layers = resolve_layers(model, layers)
        self.default_coeffs = tuple(coeffs) if coeffs is not None else NARROW_COEFFS
        samples = [(p.positive, p.negative) for p in pairs]
        with torch.no_grad():
            pos, neg = sv.extract_activations(model, tokenizer, samples, layers=self.layers,
                                              batch_size=batch_size, move_to_cpu=True)
            mean = sv.aggregate_activations(pos, neg, sv.mean_aggregator())
            vectors: dict[int, Tensor] = mean
            if aggregator == "pca":
                pca = sv.aggregate_activations(pos, neg, sv.pca_aggregator())
                vectors = {k: v * mean[k].norm() for k, v in pca.items()}
        self.vector = sv.SteeringVector({k: v.float() for k, v in vectors.items()}, "decoder_block")

    def fingerprint(self) -> str:
        vs = self.vector.layer_activations
        return tensor_digest((self.sign * vs[k] for k in sorted(vs)), "steering_vectors", self.aggregator, sorted(vs))

    @contextmanager
    def applied(self, c: float) -> Iterator[None]:
        dtype = next(self.model.parameters()).dtype
        with self.vector.to(dtype=dtype).apply(self.model, multiplier=c):
            yield


def repeng_python(python: str | os.PathLike | None = None) -> Path:
    """The Python of repeng's own virtualenv: `python`, else `$INNERPISSA_REPENG_PYTHON` (one-line error
    saying how to create it when neither names an existing file)."""
    given = python if python is not None else os.environ.get(REPENG_PYTHON_ENV)
    if not given:
        raise FileNotFoundError(f"repeng_external needs a Python with repeng 0.4.0 (pass python= or set "
                                f"${REPENG_PYTHON_ENV}); create one with: {REPENG_VENV_HINT}")
    path = Path(given).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"repeng's Python {path} does not exist (from "
                                f"{'python=' if python is not None else '$' + REPENG_PYTHON_ENV}); "
                                f"create it with: {REPENG_VENV_HINT}")
    return path


def repeng_external_available(python: str | os.PathLike | None = None) -> bool:
    try:
        repeng_python(python)
    except FileNotFoundError:
        return False
    return True


def run_repeng(model_dir: str | Path, pairs: Sequence[ContrastivePair], layers: Sequence[int], out: str | Path,
               center: bool = True, batch_size: int = 32, dtype: str = "float32", device: str = "cpu",
               python: str | os.PathLike | None = None, timeout: float | None = None) -> SteeringVectors:
    """Run `repeng.ControlVector.train` in repeng's virtualenv on a saved model folder; return its vectors.

    `center=True` is repeng's `pca_diff` (its default), False its `pca_center`. `out` is the output stem
    (`<out>.safetensors` / `<out>.json`, innerpissa's `SteeringVectors` format, written by the runner).
    """
    py = repeng_python(python)
    out = Path(out)
    job = {"model": str(model_dir), "pairs": [[p.positive, p.negative] for p in pairs],
           "layers": [int(layer) for layer in layers], "method": "pca_diff" if center else "pca_center",
           "batch_size": int(batch_size), "dtype": dtype, "device": device, "out": str(out)}
    job_path = out.with_name(out.name + ".job.json")
    job_path.write_text(json.dumps(job), encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "PYTHONPATH": ""}
    proc = subprocess.run([str(py), str(REPENG_RUNNER), str(job_path)], capture_output=True, text=True,
                          env=env, timeout=timeout, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"repeng runner failed with exit code {proc.returncode} under {py}: {tail[0]}")
    return SteeringVectors.load(out)


def train_repeng_external(model: nn.Module, tokenizer, pairs: Sequence[ContrastivePair],
                          layers: Sequence[int] | None = None, center: bool = True, batch_size: int = 32,
                          python: str | os.PathLike | None = None, workdir: str | Path | None = None,
                          ) -> SteeringVectors:
    """repeng 0.4.0's own vectors for our model and pairs (see the module doc); call it on the base model.

    The model (in its dtype) and tokenizer are written with `save_pretrained` to a temporary folder (inside
    `workdir` when given), so repeng loads exactly these weights; the folder is removed afterwards.
    """
    if not pairs:
        raise ValueError("no training pairs given")
    py = repeng_python(python)  # fail before writing a model folder
    layers = resolve_layers(model, layers)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    device = "cuda" if next(model.parameters()).is_cuda else "cpu"
    with tempfile.TemporaryDirectory(dir=workdir, prefix="innerpissa-repeng-") as tmp:
        folder = Path(tmp) / "model"
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        sv = run_repeng(folder, pairs, layers, Path(tmp) / "vectors", center, batch_size, dtype, device, py)
    stats = sv.meta.get("stats", {})
    if stats:
        sv.meta["coeff_unit"] = sum(st["mean_diff_norm"] for st in stats.values()) / len(stats)
    sv.meta["model"] = str(getattr(model, "name_or_path", ""))
    return sv
