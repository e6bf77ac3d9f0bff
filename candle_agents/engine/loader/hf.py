"""Load an HF model folder: config.json, safetensors (sharded too), tokenizer files."""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from tokenizers import Tokenizer

from candle_agents.engine.loader.base import Checkpoint, TokenizerInfo
from candle_agents.errors import ModelLoadError


def load_hf_folder(path: str | Path) -> Checkpoint:
    root = Path(path)
    config = _read_json(root / "config.json", required=True)
    files = _safetensors_files(root)
    names: dict[str, Path] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for key in st.keys():  # noqa: SIM118 (safe_open is not iterable)
                names[key] = f

    def weights(keep_quantized: Collection[str] = ()) -> Iterator[tuple[str, torch.Tensor]]:
        # Float checkpoints have nothing quantized to keep.
        for f in files:
            with safe_open(str(f), framework="pt") as st:
                for key in st.keys():  # noqa: SIM118 (safe_open is not iterable)
                    yield key, st.get_tensor(key)

    tokenizer, info = _load_tokenizer(root)
    eos = _eos_ids(root, config, tokenizer, info)
    return Checkpoint(
        name=root.name,
        path=str(root),
        config=config,
        weights=weights,
        num_weights=len(names),
        tokenizer=tokenizer,
        tokenizer_info=info,
        eos_token_ids=eos,
    )


def _read_json(path: Path, required: bool = False) -> dict[str, Any]:
    if not path.is_file():
        if required:
            raise ModelLoadError(f"{path} not found: a model folder needs config.json")
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc


def _safetensors_files(root: Path) -> list[Path]:
    index = root / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index).get("weight_map", {})
        files = sorted({root / name for name in weight_map.values()})
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ModelLoadError(f"{root}: shards named in the index are missing: {missing}")
        return files
    files = sorted(root.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(
            f"no *.safetensors weights in {root}: candle-agents loads safetensors or GGUF "
            "(convert .bin checkpoints with transformers' save_pretrained)"
        )
    return files


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value


def _load_tokenizer(root: Path) -> tuple[Tokenizer, TokenizerInfo]:
    tok_file = root / "tokenizer.json"
    if not tok_file.is_file():
        raise ModelLoadError(
            f"{tok_file} not found: candle-agents needs a fast tokenizer file "
            "(save one with transformers' tokenizer.save_pretrained)"
        )
    tokenizer = Tokenizer.from_file(str(tok_file))
    cfg = _read_json(root / "tokenizer_config.json")
    template = cfg.get("chat_template")
    jinja = root / "chat_template.jinja"
    if jinja.is_file():
        template = jinja.read_text(encoding="utf-8")
    elif not template and (root / "chat_template.json").is_file():
        template = _read_json(root / "chat_template.json").get("chat_template")
    if isinstance(template, list):  # named templates: take the default one
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    special = _read_json(root / "special_tokens_map.json")

    def pick(key: str) -> str | None:
        return _token_text(cfg.get(key)) or _token_text(special.get(key))

    info = TokenizerInfo(
        chat_template=template,
        bos_token=pick("bos_token"),
        eos_token=pick("eos_token"),
        pad_token=pick("pad_token"),
        unk_token=pick("unk_token"),
        add_bos_token=bool(cfg.get("add_bos_token", False)),
        add_eos_token=bool(cfg.get("add_eos_token", False)),
    )
    return tokenizer, info


def _eos_ids(
    root: Path, config: dict[str, Any], tokenizer: Tokenizer, info: TokenizerInfo
) -> list[int]:
    ids: list[int] = []
    for source in (_read_json(root / "generation_config.json"), config):
        value = source.get("eos_token_id")
        if value is None:
            continue
        ids.extend(value if isinstance(value, list) else [value])
        break
    if info.eos_token:
        tid = tokenizer.token_to_id(info.eos_token)
        if tid is not None:
            ids.append(tid)
    return list(dict.fromkeys(int(i) for i in ids))
