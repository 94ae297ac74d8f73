"""The LangChain and LlamaIndex integrations against the real installed packages, and the README's RAG snippets."""

import asyncio
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from policies import ProcessorConfig, ReducerError, TokenReducer
from policies.network import NetworkConfig

ROOT = Path(__file__).resolve().parents[1]
README_DIR = "runs/default/reducer"
Q = "What is the code for otter?"
CHUNKS = ["The code for otter is 1234. The sky is blue.", "", "Herons fish at dawn in the north.", "Lynx code 5555."]


@pytest.fixture(scope="module")
def reducer_dir(tiny_lm, tmp_path_factory):
    torch.manual_seed(0)
    net = NetworkConfig(d_model=32, n_layers=1, n_unit_layers=1, n_heads=2)
    reducer = TokenReducer.from_base_model(
        tiny_lm.model, tiny_lm.tokenizer, spec=tiny_lm.spec, processor=ProcessorConfig(max_len=64), network=net
    )
    return reducer.save_pretrained(tmp_path_factory.mktemp("rag") / "reducer")


def test_langchain_compressor(reducer_dir):
    pytest.importorskip(
        "langchain_core", reason="the langchain extra is not installed (pip install tokenkeep[langchain])"
    )
    from langchain_core.documents import BaseDocumentCompressor, Document

    from policies.integrations.langchain import SPANS_KEY, TokenKeepCompressor

    comp = TokenKeepCompressor.from_pretrained(reducer_dir, rate=0.4, force_keep=["1234", "not in any chunk"])
    assert isinstance(comp, BaseDocumentCompressor)
    docs = [Document(page_content=c, metadata={"chunk": i}, id=f"d{i}") for i, c in enumerate(CHUNKS)]
    out = comp.compress_documents(docs, Q)
    want = comp.reducer.reduce_documents(Q, CHUNKS, rate=0.4, force_keep=["1234"])
    assert [d.metadata["chunk"] for d in out] == [i for i in range(4) if i == 1 or i not in want.dropped]
    for d in out:
        i = d.metadata["chunk"]
        assert d.id == f"d{i}" and docs[i].metadata == {"chunk": i}  # ids kept, inputs untouched
        if CHUNKS[i]:
            assert d.page_content == want.documents[i].text.strip()
            assert d.metadata[SPANS_KEY] == [list(s) for s in want.documents[i].spans]
        else:
            assert d is docs[i]  # nothing to reduce: passed through
    assert "1234" in out[0].page_content and len(out[0].page_content) < len(CHUNKS[0])
    again = asyncio.run(comp.acompress_documents(docs, Q))
    assert [d.page_content for d in again] == [d.page_content for d in out]
    assert comp.compress_documents([], Q) == []
    with pytest.raises(ValueError, match="not both"):
        TokenKeepCompressor.from_pretrained(reducer_dir, rate=0.3, target_tokens=10)
    tight = TokenKeepCompressor.from_pretrained(reducer_dir, target_tokens=1, force_keep=["The code for otter"])
    with pytest.raises(ReducerError, match="more than the budget of 1 tokens"):
        tight.compress_documents(docs, Q)


def test_llamaindex_postprocessor(reducer_dir):
    pytest.importorskip(
        "llama_index.core", reason="the llamaindex extra is not installed (pip install tokenkeep[llamaindex])"
    )
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode

    from policies.integrations.llamaindex import SPANS_KEY, TokenKeepPostprocessor

    post = TokenKeepPostprocessor.from_pretrained(reducer_dir, target_tokens=12, force_keep=["1234"])
    assert isinstance(post, BaseNodePostprocessor)
    nodes = [
        NodeWithScore(node=TextNode(text=c, metadata={"src": f"s{i}"}), score=1.0 - i / 10)
        for i, c in enumerate(CHUNKS)
    ]
    out = post.postprocess_nodes(nodes, query_bundle=QueryBundle(Q))
    want = post.reducer.reduce_documents(Q, CHUNKS, target_tokens=12, force_keep=["1234"])
    kept = [i for i in range(4) if i == 1 or i not in want.dropped]
    assert [n.node.metadata["src"] for n in out] == [f"s{i}" for i in kept]
    assert [n.score for n in out] == [nodes[i].score for i in kept]
    for n in out:
        i = int(n.node.metadata["src"][1:])
        if CHUNKS[i]:
            assert n.node.get_content() == want.documents[i].text.strip()
            assert n.node.metadata[SPANS_KEY] == [list(s) for s in want.documents[i].spans]
            assert n.node.node_id == nodes[i].node.node_id
            # the spans are for us, not for the LLM or the embedding model
            assert SPANS_KEY not in n.node.get_content(metadata_mode=MetadataMode.LLM)
            assert SPANS_KEY not in n.node.get_content(metadata_mode=MetadataMode.EMBED)
    assert [n.node.get_content() for n in nodes] == CHUNKS  # inputs unchanged
    assert "1234" in out[0].node.get_content()
    by_str = post.postprocess_nodes(nodes, query_str=Q)
    assert [n.node.get_content() for n in by_str] == [n.node.get_content() for n in out]
    assert post.to_dict()["target_tokens"] == 12 and "reducer" not in post.to_dict()
    assert post.postprocess_nodes([], query_str=Q) == []
    with pytest.raises(ValueError, match="rate must be in"):
        TokenKeepPostprocessor.from_pretrained(reducer_dir, rate=1.5)


def test_missing_extra_names_the_install_command(tmp_path):
    """Without the framework installed, importing an integration says which extra to install."""
    blocker = tmp_path / "langchain_core"
    blocker.mkdir()
    (blocker / "__init__.py").write_text("raise ImportError('blocked for this test')\n")
    (tmp_path / "llama_index").mkdir()
    (tmp_path / "llama_index" / "__init__.py").write_text("raise ImportError('blocked for this test')\n")
    for module, extra in (("langchain", "langchain"), ("llamaindex", "llamaindex")):
        out = subprocess.run(
            [sys.executable, "-c", f"import policies.integrations.{module}"],
            cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}"),
            capture_output=True,
            text=True,
        )
        assert out.returncode != 0 and f"pip install tokenkeep[{extra}]" in out.stderr, out.stderr


# ------------------------------------------------------------------------------------------ README snippets
def _readme_blocks() -> list[tuple[str, str]]:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Use it in a RAG pipeline")
    section = text[start : text.index("\n## ", start + 1)]
    return re.findall(r"```(python|bash)\n(.*?)```", section, flags=re.S)


def test_readme_rag_snippets_are_short_and_complete():
    blocks = _readme_blocks()
    assert [lang for lang, _ in blocks] == ["python", "python", "python", "bash"]
    assert all(len(code.strip().splitlines()) <= 15 for _, code in blocks)
    assert all(README_DIR in code for _, code in blocks)


@pytest.mark.parametrize("which", [0, 1, 2])
def test_readme_python_snippet_runs(reducer_dir, which, capsys):
    code = _readme_blocks()[which][1]
    if "langchain_core" in code:
        pytest.importorskip("langchain_core", reason="the langchain extra is not installed")
    if "llama_index" in code:
        pytest.importorskip("llama_index.core", reason="the llamaindex extra is not installed")
    namespace: dict = {}
    exec(compile(code.replace(README_DIR, str(reducer_dir)), f"README.md block {which}", "exec"), namespace)
    printed = capsys.readouterr().out
    if "res" in namespace:  # reduce_documents
        res = namespace["res"]
        assert len(res.documents) == 3 and "otter" in res.text and printed.startswith(res.text)
    else:
        kept = namespace["kept"]
        assert 0 < len(kept) <= 3 and printed.count("\n") == len(kept)


def test_readme_command_line_snippet_runs(reducer_dir, tmp_path):
    code = _readme_blocks()[3][1]
    script = Path(sys.executable).parent / "tokenkeep"
    assert script.exists(), f"{script} is missing: reinstall the project (make install) to get the console script"
    (tmp_path / "context.txt").write_text(" ".join(c for c in CHUNKS if c) + "\n")
    env = dict(os.environ, PATH=f"{script.parent}{os.pathsep}{os.environ['PATH']}", OMP_NUM_THREADS="1")
    outputs = []
    for line in code.strip().splitlines():
        out = subprocess.run(
            line.replace(README_DIR, str(reducer_dir)),
            shell=True,
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, out.stderr
        outputs.append(out.stdout)
    assert outputs[0].strip() and len(outputs[0]) < len((tmp_path / "context.txt").read_text())
    record = json.loads(outputs[1])
    assert record["kept_tokens"] <= 20 and "otter" in record["text"] and record["forced_tokens"] > 0


# ------------------------------------------------------------------------------------------ the default format
@pytest.mark.slow
def test_default_preset_reducer_through_cli_and_integrations(tmp_path):
    """An untrained reducer of the default preset's shape on SmolLM2-135M, saved and loaded like a trained one."""
    from agents.config import PRESETS
    from envs.lm.frozen_lm import FrozenLM
    from policies.compress import main as compress

    lm = FrozenLM.load("smollm2-135m")
    cfg = PRESETS["default"]
    reducer = TokenReducer.from_base_model(
        lm.model, lm.tokenizer, spec=lm.spec, file_hash=lm.file_hash, processor=cfg.processor, budget=cfg.budget,
        network=cfg.network,
    )  # fmt: skip
    path = reducer.save_pretrained(tmp_path / "reducer")
    context = " ".join([c for c in CHUNKS if c] * 3)
    stdout = io.StringIO()
    # whole sentences are the default's units: the three forced sentences need a rate of about half the context
    args = ["--reducer", str(path), "--question", Q, "--rate", "0.5", "--force-keep", "1234", "--json"]
    assert compress(args, stdin=io.BytesIO(context.encode()), stdout=stdout) == 0
    record = json.loads(stdout.getvalue())
    assert 0 < record["kept_tokens"] <= record["max_tokens"] and "1234" in record["text"]
    assert "".join(context[s:e] for s, e in record["kept_spans"]) == record["text"]
    if _importable("langchain_core"):
        from langchain_core.documents import Document

        from policies.integrations.langchain import TokenKeepCompressor

        docs = [Document(page_content=c) for c in CHUNKS if c]
        out = TokenKeepCompressor.from_pretrained(path, rate=0.5, force_keep=["1234"]).compress_documents(docs, Q)
        assert out and "1234" in out[0].page_content
    if _importable("llama_index.core"):
        from llama_index.core.schema import NodeWithScore, TextNode

        from policies.integrations.llamaindex import TokenKeepPostprocessor

        nodes = [NodeWithScore(node=TextNode(text=c), score=1.0) for c in CHUNKS if c]
        out = TokenKeepPostprocessor.from_pretrained(path, rate=0.5).postprocess_nodes(nodes, query_str=Q)
        assert 0 < sum(len(n.node.get_content()) for n in out) < sum(len(c) for c in CHUNKS)


def _importable(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False
