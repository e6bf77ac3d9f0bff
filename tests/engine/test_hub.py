"""Models by Hugging Face Hub name, from a real huggingface_hub cache built in a tmp dir.

The cache has the layout huggingface_hub writes (blobs, snapshots/<commit> of symlinks,
refs/<name> holding the commit); huggingface_hub's own readers are asked to confirm it.
Tests run with HF_HUB_OFFLINE=1, except the downloads at the end: those go to a
loopback server speaking the Hub's HTTP API (HF_ENDPOINT), never to the network.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from candle_agents import Engine, GenerationParams, ModelLoadError
from candle_agents.cli import main
from candle_agents.engine.loader import open_checkpoint
from candle_agents.engine.loader.hub import HubName, parse_hub_name

GGUF_DIR = Path(__file__).parents[1] / "data" / "gguf"
MAIN, V0, OTHER = "a" * 40, "b" * 40, "c" * 40
ENGINE = {"kv_cache_memory": 2**22, "max_model_len": 128}


def cache_repo(cache: Path, repo: str, commit: str, files: dict[str, Path], refs=("main",)):
    """Put ``files`` (repo path -> source) into ``cache`` as huggingface_hub stores them."""
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    for name, source in files.items():
        data = Path(source).read_bytes()
        blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            blob.write_bytes(data)
        link = repo_dir / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        (repo_dir / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (repo_dir / "refs" / ref).write_text(commit)
    return repo_dir / "snapshots" / commit


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory, tiny_model_dir):
    """A cache with an HF repo, a GGUF repo at two revisions and an unsupported model."""
    cache = tmp_path_factory.mktemp("hf_home") / "hub"
    folder = tiny_model_dir("llama")
    cache_repo(cache, "tiny-org/tiny-llama", MAIN, {f.name: f for f in folder.iterdir()})
    ggufs = {
        "tiny-Q4_K_M.gguf": GGUF_DIR / "llama-h256-Q4_K_M.gguf",
        "tiny-Q8_0.gguf": GGUF_DIR / "llama-h256-Q8_0.gguf",
        "mmproj-tiny-F16.gguf": GGUF_DIR / "llama-h256-Q8_0.gguf",  # a projector: never picked
    }
    cache_repo(cache, "tiny-org/tiny-GGUF", MAIN, ggufs)
    old = {"tiny-Q4_K_M.gguf": GGUF_DIR / "llama-h64-Q4_K_M.gguf"}
    cache_repo(cache, "tiny-org/tiny-GGUF", V0, old, refs=("v0",))
    parts = [f"Q4_K_M/big-Q4_K_M-0000{i}-of-00002.gguf" for i in (1, 2)]
    cache_repo(cache, "tiny-org/big-GGUF", MAIN, dict.fromkeys(parts, ggufs["tiny-Q4_K_M.gguf"]))
    bert = tmp_path_factory.mktemp("bert") / "config.json"
    bert.write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert"}))
    weights = folder / "model.safetensors"
    cache_repo(cache, "other-org/bert", OTHER, {"config.json": bert, "model.safetensors": weights})
    return cache


@pytest.fixture(autouse=True)
def offline_hub(hub_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return hub_cache


def test_the_cache_is_the_layout_huggingface_hub_reads(hub_cache):
    from huggingface_hub import scan_cache_dir, try_to_load_from_cache

    info = scan_cache_dir(hub_cache)
    assert not info.warnings
    assert {r.repo_id for r in info.repos} == {
        "tiny-org/tiny-llama",
        "tiny-org/tiny-GGUF",
        "tiny-org/big-GGUF",
        "other-org/bert",
    }
    found = try_to_load_from_cache("tiny-org/tiny-GGUF", "tiny-Q4_K_M.gguf", cache_dir=hub_cache)
    assert found == str(
        hub_cache / "models--tiny-org--tiny-GGUF" / "snapshots" / MAIN / "tiny-Q4_K_M.gguf"
    )
    old = try_to_load_from_cache("tiny-org/tiny-GGUF", "tiny-Q4_K_M.gguf", hub_cache, revision="v0")
    assert Path(old).parent.name == V0


@pytest.mark.parametrize(
    ("name", "parsed"),
    [
        ("HuggingFaceTB/SmolLM2-360M-Instruct", HubName("HuggingFaceTB/SmolLM2-360M-Instruct")),
        (
            "unsloth/gemma-3-1b-it-GGUF:Q4_K_M",
            HubName("unsloth/gemma-3-1b-it-GGUF", None, "Q4_K_M"),
        ),
        (
            "hf.co/unsloth/gemma-3-1b-it-GGUF:q8_0",
            HubName("unsloth/gemma-3-1b-it-GGUF", None, "q8_0"),
        ),
        ("https://huggingface.co/org/m@v1.0", HubName("org/m", "v1.0")),
        ("org/m-GGUF@refs/pr/1:Q4_0", HubName("org/m-GGUF", "refs/pr/1", "Q4_0")),
        ("org/m-GGUF:Q4_0@v2", HubName("org/m-GGUF", "v2", "Q4_0")),
        ("smollm2-135m-instruct", None),
        ("/models/llama", None),
        ("./org/name", None),
        ("org/model.gguf", None),
        ("org/m-GGUF:m-Q4_0.gguf", HubName("org/m-GGUF", None, "m-Q4_0.gguf")),
        ("a/b/c", None),
        ("org/m@../../etc", None),
    ],
)
def test_names(name, parsed):
    assert parse_hub_name(name) == parsed


def test_hf_name_generates_what_the_folder_does(tiny_model_dir):
    params = GenerationParams(max_tokens=8, temperature=0, ignore_eos=True)
    with Engine.from_pretrained(str(tiny_model_dir("llama")), **ENGINE) as engine:
        expected = engine.generate("The quick brown fox", params).token_ids
    for name in ("tiny-org/tiny-llama", "hf.co/tiny-org/tiny-llama"):
        with Engine.from_pretrained(name, **ENGINE) as engine:
            assert engine.model_name == name
            assert engine.generate("The quick brown fox", params).token_ids == expected


def test_gguf_quant_tag_picks_the_file(hub_cache):
    snapshot = hub_cache / "models--tiny-org--tiny-GGUF" / "snapshots" / MAIN
    for tag, file in (("Q4_K_M", "tiny-Q4_K_M.gguf"), ("q8_0", "tiny-Q8_0.gguf")):
        checkpoint = open_checkpoint(f"tiny-org/tiny-GGUF:{tag}")
        assert Path(checkpoint.path) == snapshot / file
        direct = open_checkpoint(str(GGUF_DIR / f"llama-h256-{tag.upper()}.gguf"))
        assert checkpoint.config == direct.config and checkpoint.quantized == direct.quantized


def test_a_file_name_picks_that_file_exactly(hub_cache):
    snapshot = hub_cache / "models--tiny-org--tiny-GGUF" / "snapshots" / MAIN
    checkpoint = open_checkpoint("tiny-org/tiny-GGUF:tiny-Q8_0.gguf")
    assert Path(checkpoint.path) == snapshot / "tiny-Q8_0.gguf"
    with pytest.raises(ModelLoadError, match=r"no GGUF file named 'Q8_0.gguf' .* available"):
        open_checkpoint("tiny-org/tiny-GGUF:Q8_0.gguf")  # a name, not a tag: no near match


def test_without_a_tag_q4_k_m_is_the_default_and_logged(caplog):
    with caplog.at_level(logging.INFO, logger="candle_agents.engine.loader.hub"):
        checkpoint = open_checkpoint("hf.co/tiny-org/tiny-GGUF")
    assert Path(checkpoint.path).name == "tiny-Q4_K_M.gguf"
    assert "no quant given, using tiny-Q4_K_M.gguf" in caplog.text


def test_a_missing_quant_names_the_ones_there():
    with pytest.raises(ModelLoadError) as err:
        open_checkpoint("tiny-org/tiny-GGUF:Q5_K_M")
    message = str(err.value)
    assert "'Q5_K_M'" in message and "available: Q4_K_M, Q8_0" in message
    assert "candle-agents pull tiny-org/tiny-GGUF:Q5_K_M" in message


def test_a_split_gguf_is_refused_with_the_merge_command():
    with pytest.raises(ModelLoadError) as err:
        open_checkpoint("tiny-org/big-GGUF:Q4_K_M")
    message = str(err.value)
    assert "one of 2 parts of a split GGUF" in message
    assert "llama-gguf-split --merge Q4_K_M/big-Q4_K_M-00001-of-00002.gguf merged.gguf" in message


def test_revision_picks_the_snapshot(hub_cache):
    snapshot = hub_cache / "models--tiny-org--tiny-GGUF" / "snapshots" / V0
    for name in (
        "tiny-org/tiny-GGUF@v0:Q4_K_M",
        "tiny-org/tiny-GGUF:Q4_K_M@v0",
        f"tiny-org/tiny-GGUF@{V0}",
    ):
        checkpoint = open_checkpoint(name)
        assert Path(checkpoint.path) == snapshot / "tiny-Q4_K_M.gguf"
        assert checkpoint.config["hidden_size"] == 64  # the h64 file, not main's h256
    with pytest.raises(ModelLoadError, match="available: Q4_K_M"):
        open_checkpoint("tiny-org/tiny-GGUF@v0:Q8_0")
    with pytest.raises(ModelLoadError, match="not in the Hugging Face cache"):
        open_checkpoint("tiny-org/tiny-GGUF@v9:Q4_K_M")


def test_an_uncached_name_offline_says_how_to_get_it(hub_cache):
    with pytest.raises(ModelLoadError) as err:
        Engine.from_pretrained("nobody/nothing-GGUF:Q4_K_M")
    message = str(err.value)
    assert "not in the Hugging Face cache" in message and str(hub_cache) in message
    assert "HF_HUB_OFFLINE is set" in message
    assert "candle-agents pull nobody/nothing-GGUF:Q4_K_M" in message
    assert "local folder or .gguf file" in message


def test_the_cache_folder_is_read_when_called(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(ModelLoadError, match="not in the Hugging Face cache"):
        open_checkpoint("tiny-org/tiny-llama")
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    with pytest.raises(ModelLoadError, match=re.escape(str(tmp_path / "home" / "hub"))):
        open_checkpoint("tiny-org/tiny-llama")


def test_models_lists_the_default_and_the_cached_models(hub_cache, capsys):
    assert main(["models"]) == 0
    lines = dict(line.split("\t", 1) for line in capsys.readouterr().out.splitlines())
    names = list(lines)
    assert names[0] == "smollm2-135m-instruct"
    snapshot = hub_cache / "models--tiny-org--tiny-GGUF" / "snapshots"
    assert lines["tiny-org/tiny-llama"] == str(
        hub_cache / "models--tiny-org--tiny-llama" / "snapshots" / MAIN
    )
    assert lines["tiny-org/tiny-GGUF:Q4_K_M"] == str(snapshot / MAIN / "tiny-Q4_K_M.gguf")
    assert lines["tiny-org/tiny-GGUF:Q8_0"] == str(snapshot / MAIN / "tiny-Q8_0.gguf")
    assert lines["tiny-org/tiny-GGUF@v0:Q4_K_M"] == str(snapshot / V0 / "tiny-Q4_K_M.gguf")
    assert not any(w in n.lower() for n in names for w in ("bert", "mmproj", "big"))  # cannot run


def test_pull_offline_finds_a_cached_model_and_fails_clearly_on_another(hub_cache, capsys):
    assert main(["pull", "tiny-org/tiny-GGUF:Q8_0"]) == 0
    out = capsys.readouterr().out.strip()
    assert out == str(
        hub_cache / "models--tiny-org--tiny-GGUF" / "snapshots" / MAIN / "tiny-Q8_0.gguf"
    )
    assert main(["pull", "tiny-org/tiny-llama"]) == 0
    assert Path(capsys.readouterr().out.strip()).joinpath("config.json").is_file()
    assert main(["pull", "nobody/nothing"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: model 'nobody/nothing' not found")
    assert "candle-agents pull nobody/nothing" in err and "HF_HUB_OFFLINE" in err
    assert main(["pull", "./not-a-hub-name"]) == 2
    assert "not a Hugging Face model name" in capsys.readouterr().err


def test_chat_candle_and_candle_llm_take_a_hub_name():
    pytest.importorskip("langchain_core")
    from candle_agents.integrations.langchain import ChatCandle

    chat = ChatCandle(
        model="tiny-org/tiny-llama", engine_config=ENGINE, max_tokens=4, temperature=0
    )
    reply = chat.invoke("Hi")
    assert reply.response_metadata["model_name"] == "tiny-org/tiny-llama"
    assert reply.usage_metadata["output_tokens"] >= 1
    engine = chat.get_engine()
    try:
        pytest.importorskip("llama_index.core")
        from candle_agents.integrations.llamaindex import CandleLLM

        llm = CandleLLM(model="tiny-org/tiny-llama", engine_config=ENGINE, max_tokens=4)
        assert llm.complete("Hi").text is not None
    finally:
        engine.shutdown()


def test_the_server_serves_a_hub_name():
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from candle_agents.server import create_app

    name = "hf.co/tiny-org/tiny-GGUF:Q4_K_M"
    with TestClient(create_app(model=name, **ENGINE)) as client:
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == [name]
        body = {"model": name, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
        reply = client.post("/v1/chat/completions", json=body)
        assert reply.status_code == 200 and reply.json()["model"] == name


# -- downloads, from a loopback server speaking the Hub's HTTP API ----------------------------


class FakeHub(ThreadingHTTPServer):
    """The Hub endpoints huggingface_hub downloads through: repo info, file trees, files."""

    def __init__(self, repos: dict[str, tuple[str, dict[str, bytes]]]) -> None:
        self.repos = repos  # repo id -> (commit, {path: content})
        self.requests: list[str] = []
        super().__init__(("127.0.0.1", 0), _HubHandler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()


class _HubHandler(BaseHTTPRequestHandler):
    server: FakeHub

    def log_message(self, *args) -> None:
        pass

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        path = unquote(urlparse(self.path).path)
        self.server.requests.append(path)
        api = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(revision|tree)/([^/]+)(/.*)?", path)
        file = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        repo = (api or file)[1] if api or file else None
        if repo not in self.server.repos:
            return self._send(404, b"{}", {"X-Error-Code": "RepoNotFound"}, body)
        commit, files = self.server.repos[repo]
        if api and api[2] == "revision":
            info = {"id": repo, "sha": commit, "siblings": [{"rfilename": f} for f in files]}
            return self._send(200, json.dumps(info).encode(), {}, body)
        if api:
            tree = [
                {"type": "file", "path": f, "size": len(d), "oid": hashlib.sha1(d).hexdigest()}
                for f, d in files.items()
            ]
            return self._send(200, json.dumps(tree).encode(), {}, body)
        if file[3] not in files:
            return self._send(404, b"{}", {"X-Error-Code": "EntryNotFound"}, body)
        data = files[file[3]]
        etag = f'"{hashlib.sha256(data).hexdigest()}"'
        self._send(200, data, {"X-Repo-Commit": commit, "ETag": etag}, body)

    def _send(self, status: int, data: bytes, headers: dict[str, str], body: bool) -> None:
        self.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(data))}.items():
            self.send_header(key, value)
        self.end_headers()
        if body:
            self.wfile.write(data)


@pytest.fixture
def online_hub(tmp_path, monkeypatch, tiny_model_dir):
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        pytest.skip("huggingface_hub was imported in offline mode")
    folder = tiny_model_dir("llama")
    files = {f.name: f.read_bytes() for f in folder.iterdir()}
    # What the loader does not read must not be downloaded.
    files |= {"consolidated.safetensors": files["model.safetensors"], "pytorch_model.bin": b"x"}
    ggufs = {
        "tiny-Q4_K_M.gguf": (GGUF_DIR / "llama-h256-Q4_K_M.gguf").read_bytes(),
        "tiny-Q8_0.gguf": (GGUF_DIR / "llama-h256-Q8_0.gguf").read_bytes(),
        "README.md": b"# tiny",
    }
    bert = {"config.json": b'{"architectures": ["BertModel"]}', "model.safetensors": b"x"}
    hub = FakeHub(
        {
            "tiny-org/tiny-llama": (MAIN, files),
            "tiny-org/tiny-GGUF": (V0, ggufs),
            "o/bert": (OTHER, bert),
        }
    )
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE")
    yield hub
    hub.shutdown()
    hub.server_close()


def test_a_name_is_downloaded_once_then_runs_offline(online_hub, tmp_path, monkeypatch):
    params = GenerationParams(max_tokens=8, temperature=0, ignore_eos=True)
    with Engine.from_pretrained("tiny-org/tiny-llama", **ENGINE) as engine:
        tokens = engine.generate("The quick brown fox", params).token_ids
    snapshot = tmp_path / "hub" / "models--tiny-org--tiny-llama" / "snapshots" / MAIN
    wanted = {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    }
    assert {f.name for f in snapshot.iterdir()} == wanted
    downloaded = {r.rsplit("/", 1)[1] for r in online_hub.requests if "/resolve/" in r}
    assert downloaded == wanted  # no consolidated.safetensors, no .bin
    online_hub.requests.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with Engine.from_pretrained("tiny-org/tiny-llama", **ENGINE) as engine:
        assert engine.generate("The quick brown fox", params).token_ids == tokens
    monkeypatch.delenv("HF_HUB_OFFLINE")
    open_checkpoint("tiny-org/tiny-llama")  # in the cache: no request even online
    assert not [r for r in online_hub.requests if "tiny-org" in r]


def test_pull_downloads_only_the_quant_asked_for(online_hub, tmp_path, capsys, monkeypatch):
    assert main(["pull", "hf.co/tiny-org/tiny-GGUF:Q8_0"]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert (
        path
        == tmp_path / "hub" / "models--tiny-org--tiny-GGUF" / "snapshots" / V0 / "tiny-Q8_0.gguf"
    )
    assert [f.name for f in path.parent.iterdir()] == ["tiny-Q8_0.gguf"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline, no quant: what the cache has
    assert open_checkpoint("tiny-org/tiny-GGUF").path.endswith("tiny-Q8_0.gguf")
    monkeypatch.delenv("HF_HUB_OFFLINE")  # online: the default quant, from the Hub
    assert open_checkpoint("tiny-org/tiny-GGUF").path.endswith("tiny-Q4_K_M.gguf")
    with pytest.raises(
        ModelLoadError, match=r"'Q5_K_M' in tiny-org/tiny-GGUF on the Hub .*available: Q4_K_M, Q8_0"
    ):
        open_checkpoint("tiny-org/tiny-GGUF:Q5_K_M")


def test_pull_checks_the_architecture_and_the_name_first(online_hub, tmp_path, capsys):
    assert main(["pull", "o/bert"]) == 2
    assert "architecture 'BertModel' is not supported" in capsys.readouterr().err
    snapshot = tmp_path / "hub" / "models--o--bert" / "snapshots" / OTHER
    assert [f.name for f in snapshot.iterdir()] == ["config.json"]  # the weights never came
    assert main(["pull", "nobody/nothing"]) == 2
    err = capsys.readouterr().err
    assert (
        "not found on the Hugging Face Hub, or it is private or gated" in err and "HF_TOKEN" in err
    )
