"""Models where users keep them: repo ids resolved through the local Hugging Face cache.

``org/name`` names a model folder (config.json and weights: vLLM loads it, llama.cpp gets it
converted); ``org/name:Q4_K_M`` or ``org/name:file.gguf`` picks one GGUF of a GGUF repo (a
repo holding a single GGUF needs no suffix). Lookups are offline first, through
``huggingface_hub`` and its cache layout (``HF_HUB_CACHE``); only when that misses and
``HF_HUB_OFFLINE`` is not set is a download tried.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import ModelNotFound

__all__ = ["is_repo_id", "resolve_repo"]

_REPO = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+(:[\w.+-]+)?")


def is_repo_id(model: object) -> bool:
    """Whether ``model`` reads as ``org/name[:PICK]`` and is not an existing path (nor a file
    name: ``models/qwen.gguf`` that does not exist is a missing file, not a repo)."""
    return isinstance(model, str) and bool(_REPO.fullmatch(model)) and not Path(model).expanduser().exists() \
        and not model.partition(":")[0].lower().endswith((".gguf", ".safetensors", ".bin", ".json"))


def resolve_repo(model: str) -> Path:
    """The folder (``org/name``) or GGUF file (``org/name:PICK``) of a repo in the HF cache."""
    repo, _, pick = model.partition(":")
    folder = _snapshot(repo, pick)
    ggufs = sorted(p for p in folder.rglob("*.gguf") if p.is_file())  # the hub links files to blobs
    if pick:
        chosen = _pick(ggufs, pick)
        if chosen is None and not _offline():
            # a repo cached in part (another quantization fetched before): this one may be online
            try:
                ggufs = sorted(p for p in _download(repo, pick, "").rglob("*.gguf") if p.is_file())
            except ModelNotFound:
                pass  # said below, with the files there are
            else:
                chosen = _pick(ggufs, pick)
        if chosen is None:
            names = ", ".join(p.name for p in ggufs) or "none"
            raise ModelNotFound(f"{repo} in the Hugging Face cache has no GGUF matching {pick!r} "
                                f"(GGUF files there: {names}), and none was downloaded. Name one as "
                                f"{repo}:FILE.gguf or {repo}:QUANT, or fetch it: `{_fetch_command(repo, pick)}`.")
        return chosen
    if (folder / "config.json").exists():
        return folder
    if len(ggufs) == 1:
        return ggufs[0]
    if ggufs:
        raise ModelNotFound(f"{repo} holds {len(ggufs)} GGUF files ({', '.join(p.name for p in ggufs)}); "
                            f"pick one as {repo}:QUANT (e.g. {repo}:Q4_K_M) or {repo}:FILE.gguf.")
    raise ModelNotFound(f"{repo} in the Hugging Face cache ({folder}) has neither a config.json "
                        "nor a .gguf file: it is not a model labkit can load.")


def _pick(ggufs: list[Path], pick: str) -> Path | None:
    exact = [p for p in ggufs if p.name == pick]
    if exact:
        return exact[0]
    # Q4_K_M matches "name-Q4_K_M.gguf" and "name.Q4_K_M.gguf", not "name-Q4_K_M_L.gguf"; a
    # model split in parts ("name-Q4_K_M-00001-of-00003.gguf") is named by its first part.
    pattern = re.compile(rf"(^|[-._]){re.escape(pick)}(-(\d{{5}})-of-\d{{5}})?\.gguf$", re.IGNORECASE)
    found = [p for p in ggufs if (m := pattern.search(p.name)) and m.group(3) in (None, "00001")]
    if len(found) > 1:  # a multimodal repo's vision projector (mmproj-*-F16.gguf) is not the model
        found = [p for p in found if not p.name.lower().startswith("mmproj")] or found
    if len(found) > 1:
        raise ModelNotFound(f"{pick!r} matches {len(found)} GGUF files ({', '.join(p.name for p in found)}): "
                            "name one as REPO:FILE.gguf.")
    return found[0] if found else None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _fetch_command(repo: str, pick: str) -> str:
    return f"hf download {repo}" + (f" --include '*{pick}*'" if pick and not pick.endswith(".gguf")
                                    else f" {pick}" if pick else "")


def _snapshot(repo: str, pick: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import HF_HUB_CACHE
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache = os.environ.get("HF_HUB_CACHE") or HF_HUB_CACHE  # read per call: tests and users change it
    try:
        return Path(snapshot_download(repo, local_files_only=True, cache_dir=cache))
    except LocalEntryNotFoundError:
        pass
    fetch = _fetch_command(repo, pick)
    if _offline():
        raise ModelNotFound(f"{repo} is not in the Hugging Face cache ({cache}) and "
                            f"HF_HUB_OFFLINE is set. Fetch it while online: `{fetch}`.")
    return _download(repo, pick, fetch)


def _download(repo: str, pick: str, fetch: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import HF_HUB_CACHE

    cache = os.environ.get("HF_HUB_CACHE") or HF_HUB_CACHE
    try:
        # (the hub's patterns are case-sensitive; a pick is not)
        patterns = [f"*{pick}*", f"*{pick.upper()}*", f"*{pick.lower()}*", "*.json", "*.model", "*.txt"] \
            if pick else None
        return Path(snapshot_download(repo, allow_patterns=patterns, etag_timeout=10, cache_dir=cache))
    except Exception as e:  # no network, no such repo, gated: all say the same to the user
        raise ModelNotFound(f"{repo} is not in the Hugging Face cache ({cache}) and could "
                            f"not be downloaded ({type(e).__name__}), and there is no local {repo} "
                            f"either. Fetch it with `{fetch}`, or pass the path of a folder or "
                            "file that exists.") from None
