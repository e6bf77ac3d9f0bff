"""Models by Hugging Face Hub name, resolved to files in huggingface_hub's cache.

Names: ``org/name`` (safetensors + config + tokenizer, or a GGUF repo),
``org/name-GGUF:Q4_K_M`` (the GGUF file of that quant, as llama.cpp's ``-hf`` and
Ollama's ``hf.co/...`` take it), an optional ``hf.co/`` prefix and an optional
``@revision`` (branch, tag or commit) after the repo: ``org/name@v1.0:Q8_0``.

A name found in the cache opens with no network call; a missing one is downloaded
once (with huggingface_hub's progress bars) unless ``HF_HUB_OFFLINE`` is set.
``pull`` checks the Hub for a newer revision. The cache folder (``HF_HUB_CACHE``,
``HF_HOME``), the offline switch and ``HF_ENDPOINT`` are read from the environment on
each call; the token is huggingface_hub's own (``HF_TOKEN``, or ``hf auth login``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from candle_agents.errors import ModelLoadError

__all__ = [
    "HubName",
    "cache_dir",
    "cached_models",
    "is_offline",
    "parse_hub_name",
    "pull",
    "resolve",
]

logger = logging.getLogger(__name__)

# What the HF loader reads besides the weights.
_META_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
)
_INDEX = "model.safetensors.index.json"
_DEFAULT_QUANT = "Q4_K_M"
_PART = r"[A-Za-z0-9](?:[\w.-]*[A-Za-z0-9_])?"
_NAME = re.compile(
    rf"(?:(?:https?://)?(?:hf\.co|huggingface\.co)/)?(?P<repo>{_PART}/{_PART})"
    r"(?:@(?P<rev>[^:@\s]+))?(?::(?P<quant>[\w.-]+))?(?:@(?P<rev2>[^:@\s]+))?"
)
_SPLIT = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)
_QUANT = re.compile(
    r"(?<![A-Za-z0-9])((?:UD-)?(?:I?Q\d[A-Z0-9_]*|TQ\d_\d|BF16|F16|F32|MXFP4[A-Z0-9_]*))$",
    re.IGNORECASE,
)
_COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class HubName:
    """A parsed name: the repo id, a revision (None: main) and a GGUF quant tag."""

    repo: str
    revision: str | None = None
    quant: str | None = None

    def __str__(self) -> str:
        rev = f"@{self.revision}" if self.revision else ""
        return f"{self.repo}{rev}{':' + self.quant if self.quant else ''}"


def parse_hub_name(name: str) -> HubName | None:
    """``name`` as a Hub name, or None when it reads as a path or another name."""
    match = _NAME.fullmatch(name.strip())
    # A name ending in .gguf is a path, unless the .gguf is the file after the colon.
    if match is None or (name.lower().endswith(".gguf") and not match["quant"]):
        return None
    repo, revision = match["repo"], match["rev"] or match["rev2"]
    if "--" in repo or ".." in repo or (match["rev"] and match["rev2"]):
        return None
    if revision and (".." in revision or revision.startswith("/")):
        return None  # a revision names a ref or a commit, never a path
    return HubName(repo, revision, match["quant"])


def cache_dir() -> Path:
    """huggingface_hub's cache folder, from the environment as it is now."""
    env = os.environ
    folder = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if not folder:
        home = env.get("HF_HOME") or os.path.join(
            env.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface"
        )
        folder = os.path.join(home, "hub")
    return Path(os.path.expandvars(folder)).expanduser()


def _endpoint() -> str | None:
    """``HF_ENDPOINT`` (a mirror) as the environment sets it now; None: huggingface_hub's."""
    return os.environ.get("HF_ENDPOINT", "").rstrip("/") or None


def is_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) as the environment sets it now."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in ("1", "ON", "YES", "TRUE")


def resolve(name: str, refresh: bool = False) -> Path:
    """The local path of ``name``: a snapshot folder (HF) or a .gguf file.

    The cache answers first, with no network call; what it lacks is downloaded unless
    offline. ``refresh`` asks the Hub first (``pull``). When the Hub fails, what the
    cache has is taken.
    """
    ref = parse_hub_name(name)
    if ref is None:
        raise ModelLoadError(
            f"{name!r} is not a Hugging Face model name: use org/name, org/name-GGUF:QUANT "
            "(e.g. unsloth/gemma-3-1b-it-GGUF:Q4_K_M), optionally hf.co/ before and "
            "@revision after the repo"
        )
    cache = cache_dir()
    offline = is_offline()
    if not refresh or offline:
        found = _from_cache(ref, cache, offline)
        if found is not None:
            logger.info("%s: %s (from the cache)", name, found)
            return found
        if offline:
            raise ModelLoadError(_not_cached(name, cache, "HF_HUB_OFFLINE is set"))
    try:
        path = _download(ref, cache)
    except ModelLoadError:
        raise
    except Exception as exc:  # huggingface_hub's network, auth and lookup errors
        found = None
        with contextlib.suppress(ModelLoadError):  # the cache's pick, when it has one
            found = _from_cache(ref, cache, offline=True)
        if found is not None:
            logger.warning("%s: checking the Hub failed (%s); using the cache", name, exc)
            return found
        raise ModelLoadError(_explain(name, ref, cache, exc)) from exc
    logger.info("%s: %s", name, path)
    return path


def pull(name: str) -> Path:
    """Download ``name`` (or check it is cached when offline); its local path."""
    return resolve(name, refresh=True)


def cached_models() -> dict[str, str]:
    """Hub names in the cache that the engine can run, with their local paths.

    HF snapshots with complete safetensors and a supported architecture, and the
    single-file GGUFs of each cached snapshot (``repo:QUANT``). A revision other than
    main is shown as ``@ref`` (or ``@commit``).
    """
    try:
        from huggingface_hub import scan_cache_dir

        info = scan_cache_dir(cache_dir())
    except Exception:  # no cache folder yet, or one huggingface_hub cannot read
        return {}
    found: dict[str, str] = {}
    for repo in sorted(info.repos, key=lambda r: r.repo_id.lower()):
        if repo.repo_type != "model":
            continue
        for rev in sorted(repo.revisions, key=lambda r: ("main" not in r.refs, r.commit_hash)):
            base = repo.repo_id
            if "main" not in rev.refs:
                base += "@" + (sorted(rev.refs)[0] if rev.refs else rev.commit_hash)
            snapshot = Path(rev.snapshot_path)
            if _is_hf_folder(snapshot) and _supported(snapshot / "config.json"):
                found.setdefault(base, str(snapshot))
            for file in _gguf_files(snapshot):
                if not _SPLIT.search(file):
                    found.setdefault(f"{base}:{_quant_of(file)}", str(snapshot / file))
    return found


# -- the cache ------------------------------------------------------------------------------


def _snapshot(ref: HubName, cache: Path) -> Path | None:
    """The cached snapshot folder of ``ref``'s revision (refs/<rev> holds its commit)."""
    repo_dir = cache / ("models--" + ref.repo.replace("/", "--"))
    revision = ref.revision or "main"
    commit = revision
    if not _COMMIT.fullmatch(revision):
        try:
            commit = (repo_dir / "refs" / revision).read_text(encoding="utf-8").strip()
        except OSError:
            return None
    folder = repo_dir / "snapshots" / commit
    return folder if folder.is_dir() else None


def _from_cache(ref: HubName, cache: Path, offline: bool) -> Path | None:
    """``ref``'s path in the cache, or None. Online, a name without a quant waits for the
    Hub unless Q4_K_M is cached; offline, the cache's own pick is taken, and a quant it
    lacks is an error naming those it has."""
    snapshot = _snapshot(ref, cache)
    if snapshot is None:
        return None
    if ref.quant is None and _is_hf_folder(snapshot):
        return snapshot
    files = _gguf_files(snapshot)
    if not files:
        return None
    if ref.quant is None and not offline and not any(_has_quant(f, _DEFAULT_QUANT) for f in files):
        return None
    chosen = _pick_gguf(ref, files)
    if chosen is None:
        if offline:
            raise ModelLoadError(
                _no_quant(ref, files, "in the cache")
                + f"; download it while online with `candle-agents pull {ref}`"
            )
        return None
    return snapshot / chosen


def _is_hf_folder(folder: Path) -> bool:
    if not (folder / "config.json").is_file():
        return False
    index = folder / _INDEX
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError, AttributeError):
            return False
        return bool(shards) and all((folder / s).is_file() for s in shards)
    return any(folder.glob("*.safetensors"))


def _gguf_files(folder: Path) -> list[str]:
    """The model GGUFs under ``folder`` (relative paths; projector files left out)."""
    files = (p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return sorted(f for f in files if f.lower().endswith(".gguf") and "mmproj" not in f.lower())


def _supported(config_file: Path) -> bool:
    from candle_agents.engine.models import model_class

    try:
        model_class(json.loads(config_file.read_text(encoding="utf-8")))
    except (OSError, ValueError, ModelLoadError):
        return False
    return True


# -- choosing a GGUF --------------------------------------------------------------------------


def _quant_of(file: str) -> str:
    """The quant a GGUF's name carries (``Q4_K_M`` of ``model-Q4_K_M.gguf``), else its stem."""
    stem = _SPLIT.sub("", file.rsplit("/", 1)[-1])
    stem = stem[: -len(".gguf")] if stem.lower().endswith(".gguf") else stem
    match = _QUANT.search(stem)
    return match[1] if match else stem


def _has_quant(file: str, quant: str) -> bool:
    pattern = rf"(?<![A-Za-z0-9]){re.escape(quant)}(?![A-Za-z0-9_])"
    return re.search(pattern, file, re.IGNORECASE) is not None


def _pick_gguf(ref: HubName, files: list[str]) -> str | None:
    """The file of ``ref.quant`` (None when absent); without a quant, Q4_K_M or the first.

    A tag that ends in .gguf names the file itself (``org/repo:model-Q4_K_M.gguf``).
    """
    if ref.quant is not None and ref.quant.lower().endswith(".gguf"):
        matches = [f for f in files if f.rsplit("/", 1)[-1] == ref.quant]
    elif ref.quant is not None:
        matches = [f for f in files if _has_quant(f, ref.quant)]
    else:
        matches = [f for f in files if _has_quant(f, _DEFAULT_QUANT)] or files
    if not matches:
        return None
    # A single file before the parts of a split one; parts in order.
    chosen = sorted(matches, key=lambda f: (_SPLIT.search(f) is not None, f))[0]
    split = _SPLIT.search(chosen)
    if split:
        first = chosen[: split.start()] + f"-00001-of-{split[2]}.gguf"
        raise ModelLoadError(
            f"{ref}: {chosen} is one of {int(split[2])} parts of a split GGUF, and "
            "candle-agents opens single-file GGUFs: merge the parts with llama.cpp's "
            f"`llama-gguf-split --merge {first} merged.gguf` and pass merged.gguf, "
            "or choose a smaller quant"
        )
    if ref.quant is None:
        quants = sorted({_quant_of(f) for f in files})
        logger.info(
            "%s: no quant given, using %s (available: %s; pick one with %s:QUANT)",
            ref,
            chosen,
            ", ".join(quants),
            ref,
        )
    return chosen


def _no_quant(ref: HubName, files: list[str], where: str) -> str:
    quants = sorted({_quant_of(f) for f in files if not _SPLIT.search(f) or "00001-of" in f})
    what = "named" if ref.quant.lower().endswith(".gguf") else "of quant"
    return (
        f"no GGUF file {what} {ref.quant!r} in {ref.repo} {where} "
        f"(revision {ref.revision or 'main'}); available: {', '.join(quants)}"
    )


# -- downloading ------------------------------------------------------------------------------


def _download(ref: HubName, cache: Path) -> Path:
    """Fetch what the loader needs of ``ref`` into ``cache``; its local path."""
    from huggingface_hub import HfApi, hf_hub_download

    files = HfApi(endpoint=_endpoint()).list_repo_files(ref.repo, revision=ref.revision)
    has_weights = any(f.endswith(".safetensors") for f in files)
    if ref.quant is None and "config.json" in files and has_weights:
        return _download_hf(ref, files, cache)
    ggufs = sorted(f for f in files if f.lower().endswith(".gguf") and "mmproj" not in f.lower())
    if not ggufs:
        tag = f" (a quant tag, :{ref.quant}, needs a GGUF repo)" if ref.quant else ""
        raise ModelLoadError(
            f"{ref.repo} has neither config.json with safetensors nor GGUF files{tag}: "
            "candle-agents loads one or the other"
        )
    chosen = _pick_gguf(ref, ggufs)
    if chosen is None:
        raise ModelLoadError(_no_quant(ref, ggufs, "on the Hub"))
    path = hf_hub_download(
        ref.repo, chosen, revision=ref.revision, cache_dir=cache, endpoint=_endpoint()
    )
    return Path(path)


def _download_hf(ref: HubName, files: list[str], cache: Path) -> Path:
    from huggingface_hub import hf_hub_download, snapshot_download

    def fetch(filename: str) -> Path:
        return Path(
            hf_hub_download(
                ref.repo, filename, revision=ref.revision, cache_dir=cache, endpoint=_endpoint()
            )
        )

    config = fetch("config.json")  # checked before gigabytes of weights come
    from candle_agents.engine.models import model_class

    try:
        model_class(json.loads(config.read_text(encoding="utf-8")))
    except ModelLoadError as exc:
        raise ModelLoadError(f"model {str(ref)!r}: {exc}") from exc
    if _INDEX in files:
        weight_map = json.loads(fetch(_INDEX).read_text(encoding="utf-8")).get("weight_map", {})
        weights = [_INDEX, *sorted(set(weight_map.values()))]
    elif "model.safetensors" in files:
        weights = ["model.safetensors"]
    else:  # top-level files only: subfolders hold other formats or copies
        weights = [f for f in files if f.endswith(".safetensors") and "/" not in f]
    wanted = [f for f in _META_FILES if f in files] + weights
    folder = snapshot_download(
        ref.repo,
        revision=ref.revision,
        cache_dir=cache,
        allow_patterns=wanted,
        endpoint=_endpoint(),
    )
    return Path(folder)


# -- messages ---------------------------------------------------------------------------------


def _not_cached(name: str, cache: Path, reason: str) -> str:
    return (
        f"model {name!r} not found: it is not a local path and not in the Hugging Face cache "
        f"({cache}), and {reason}. Download it once while online with "
        f"`candle-agents pull {name}` (or load it with HF_HUB_OFFLINE unset), "
        "or pass a local folder or .gguf file"
    )


def _explain(name: str, ref: HubName, cache: Path, exc: Exception) -> str:
    from huggingface_hub import errors

    if isinstance(exc, errors.RevisionNotFoundError):
        return f"model {name!r}: revision {ref.revision!r} not found in {ref.repo} on the Hub"
    if isinstance(exc, errors.RepositoryNotFoundError):  # gated repos too
        return (
            f"model {name!r}: {ref.repo} was not found on the Hugging Face Hub, or it is "
            "private or gated: check the name, accept its terms on huggingface.co, and "
            "set HF_TOKEN (or run `hf auth login`)"
        )
    if isinstance(exc, errors.EntryNotFoundError):
        return f"model {name!r}: a file is missing from {ref.repo} on the Hub ({exc})"
    if isinstance(exc, (errors.OfflineModeIsEnabled, errors.LocalEntryNotFoundError)):
        return _not_cached(name, cache, "huggingface_hub is in offline mode")
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return _not_cached(
        name, cache, f"the Hub could not be reached ({type(exc).__name__}: {first_line})"
    )
