"""Bad input, big input and untrusted files: every case gets a clear error or a documented behaviour."""

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from agents.report import write_report
from envs.tasks.jsonl import MAX_LINE_BYTES, JsonlError, iter_jsonl, load_jsonl
from policies import TokenReducer
from policies.processor import ProcessorConfig
from policies.reducer import ReducerError

GOOD = {"context": "The code for otter is 1234. The sky is blue.", "question": "Code?", "answer": " 1234"}


def _write(path: Path, *lines: str | bytes) -> Path:
    path.write_bytes(b"".join(x if isinstance(x, bytes) else (x + "\n").encode() for x in lines))
    return path


# ---------------------------------------------------------------------------------------------------- JSONL
def test_jsonl_bom_and_blank_lines_are_accepted(tmp_path):
    p = _write(tmp_path / "t.jsonl", b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\n", "", "   ", json.dumps(GOOD))
    assert len(load_jsonl(p)) == 2


@pytest.mark.parametrize(
    "line,msg",
    [
        (b'{"context": "caf\xe9", "question": "q", "answer": "a"}\n', r"not UTF-8 \(byte 0xe9 at position 16\)"),
        ('{"context": "a", "question": "b"}', "missing or non-string field 'answer'"),
        ('{"context": 5, "question": "b", "answer": "c"}', "missing or non-string field 'context'"),
        ('{"context": " \\t\\n ", "question": "b", "answer": "c"}', "empty context"),
        ('{"context": "a", "question": "b", "answer": "c", "choices": ["d"]}', "not one of 'choices'"),
        ('{"context": "a b", "question": "b", "answer": "c", "evidence": [[0, 9]]}', "outside the context"),
        ('{"context": "a b", "question": "b", "answer": "c", "evidence": ["zebra"]}', "does not occur"),
        ('{"context": "a b", "question": "b", "answer": "c", "evidence": [{"x": 1}]}', "neither a"),
        ("[1, 2]", "expected a JSON object"),
        ("{oops", "invalid JSON"),
    ],
)
def test_jsonl_errors_name_the_file_line_and_cause(tmp_path, line, msg):
    p = _write(tmp_path / "bad.jsonl", json.dumps(GOOD), line)
    with pytest.raises(JsonlError, match=msg) as err:
        load_jsonl(p)
    assert f"{p}:2" in str(err.value)


def test_jsonl_evidence_snippets_become_spans(tmp_path):
    row = dict(GOOD, evidence=["code for otter is 1234", [28, 44]])
    ex = load_jsonl(_write(tmp_path / "t.jsonl", json.dumps(row)))[0]
    assert ex.evidence == ((4, 26), (28, 44))
    assert ex.context[4:26] == "code for otter is 1234"


def test_jsonl_huge_line_is_refused_without_reading_it_whole(tmp_path):
    big = json.dumps(dict(GOOD, context="x " * (MAX_LINE_BYTES // 2 + 10)))
    p = _write(tmp_path / "big.jsonl", json.dumps(GOOD), big, json.dumps(GOOD))
    with pytest.raises(JsonlError, match=r"big.jsonl:2: the line is 8.0 MiB, above the limit"):
        load_jsonl(p)
    it = iter_jsonl(p)
    assert next(it).context == GOOD["context"]  # streamed: the first example comes before the bad line is read


def test_jsonl_empty_file(tmp_path):
    with pytest.raises(JsonlError, match="no examples"):
        load_jsonl(_write(tmp_path / "e.jsonl", "", ""))


# ---------------------------------------------------------------------------------------------------- contexts
@pytest.fixture(scope="module")
def reducer(tiny_lm):
    return TokenReducer.from_base_model(
        tiny_lm.model, tiny_lm.tokenizer, spec=tiny_lm.spec, processor=ProcessorConfig(max_len=64, unit="token")
    )


def test_special_token_strings_in_a_context_are_plain_text(reducer, tiny_lm):
    ctx = "<pad><eos> The code for otter is 1234. <eos>"
    red = reducer.reduce(ctx, "Code?", rate=1.0)
    assert red.text == ctx  # kept whole, it reads back exactly: no control token was injected
    assert tiny_lm.tokenizer.pad_token_id not in red.kept_ids and tiny_lm.tokenizer.eos_token_id not in red.kept_ids
    only = reducer.reduce("<eos><eos>", "q", rate=0.5)
    assert only.kept_tokens >= 1 and "\ufffd" not in only.text


@pytest.mark.parametrize("unit", ["token", "word", "sentence"])
def test_mixed_scripts_never_lose_a_character(tiny_lm, unit):
    r = TokenReducer.from_base_model(
        tiny_lm.model, tiny_lm.tokenizer, spec=tiny_lm.spec, processor=ProcessorConfig(max_len=96, unit=unit)
    )
    ctx = "Café 😀 naïve — 東京 は 大きい。 " * 5
    for rate in (0.2, 0.5, 0.8):
        assert "\ufffd" not in r.reduce(ctx, "Where?", rate=rate).text
    assert "\ufffd" not in r.reduce(ctx, "Where?").text


def test_long_context_is_windowed_with_bounded_batches(reducer):
    ctx = " ".join(f"Fact {i}: the code for key{i} is {1000 + i}." for i in range(300))
    items = [reducer.encode(ctx)]
    assert len(items[0]) > 20 * reducer.max_len
    whole = reducer.reduce(ctx, "What is the code for key7?", rate=0.3)
    from policies.budget import Budget
    from policies.processor import process

    enc = process(reducer.config.processor, reducer.tokenizer, ctx, "What is the code for key7?")
    small = reducer.keep_masks([enc], [Budget(rate=0.3)], window_batch=2)[0]
    assert np.array_equal(small, whole.keep_mask)  # the window batch bounds memory, not the result
    assert whole.kept_tokens <= whole.max_tokens


def test_budget_arguments(reducer):
    ctx = GOOD["context"]
    n = reducer.reduce(ctx, rate=1.0).original_tokens
    assert reducer.reduce(ctx, target_tokens=10 * n).kept_tokens == n  # a target above the context keeps it all
    for bad in (0.0, -0.5, 1.01, float("nan")):
        with pytest.raises(ReducerError, match=r"rate must be in \(0, 1\]"):
            reducer.reduce(ctx, rate=bad)
    with pytest.raises(ReducerError, match="target_tokens must be an integer >= 1"):
        reducer.reduce(ctx, target_tokens=0)


def test_unknown_model_spec_offline_is_a_clear_error(monkeypatch):
    from envs.lm.frozen_lm import FrozenLM

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="model spec 'no-such-model-xyz' could not be loaded"):
        FrozenLM.load("no-such-model-xyz")


# ---------------------------------------------------------------------------------------------------- reducer files
@pytest.fixture(scope="module")
def saved(reducer, tmp_path_factory):
    out = tmp_path_factory.mktemp("r") / "reducer"
    reducer.save_pretrained(out)
    return out


def test_no_local_paths_in_a_shared_reducer(saved):
    home = str(Path.home())
    for path in saved.iterdir():
        if path.suffix in (".json", ".jinja", ".txt"):
            text = path.read_text()
            assert home not in text and "/tmp" not in text and ".cache" not in text, path.name


def test_truncated_or_swapped_files_are_refused(saved, tmp_path, tiny_lm):
    import shutil

    d = tmp_path / "truncated"
    shutil.copytree(saved, d)
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ReducerError, match="corrupted|cannot be read"):
        TokenReducer.from_pretrained(d)
    # another reducer's weights under this config
    other = TokenReducer.from_base_model(
        tiny_lm.model, tiny_lm.tokenizer, spec=tiny_lm.spec, processor=ProcessorConfig(max_len=64, unit="word")
    )
    other.network.score_head[-1].bias.data += 1.0
    other.save_pretrained(tmp_path / "other")
    d = tmp_path / "swapped"
    shutil.copytree(saved, d)
    shutil.copy(tmp_path / "other" / "model.safetensors", d / "model.safetensors")
    with pytest.raises(ReducerError, match="corrupted"):
        TokenReducer.from_pretrained(d)
    (d / "reducer_config.json").write_bytes(b"\xff\xfe garbage")
    with pytest.raises(ReducerError, match="corrupted"):
        TokenReducer.from_pretrained(d)


class _Bomb:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['TOKENKEEP_BOMB']}",))


def test_loading_a_reducer_never_executes_or_reads_other_files(saved, tmp_path, monkeypatch):
    import shutil

    d = tmp_path / "poisoned"
    shutil.copytree(saved, d)
    marker = tmp_path / "exploded"
    monkeypatch.setenv("TOKENKEEP_BOMB", str(marker))
    for name in ("pytorch_model.bin", "model.pkl", "training_args.bin", "tokenizer.pkl"):
        (d / name).write_bytes(pickle.dumps(_Bomb()))
    opened: list[str] = []
    real_open = open

    def spy(file, *a, **k):
        opened.append(str(file))
        return real_open(file, *a, **k)

    monkeypatch.setattr("builtins.open", spy)
    r = TokenReducer.from_pretrained(d)
    assert r.reduce(GOOD["context"], "Code?", rate=0.5).kept_tokens > 0
    assert not marker.exists()
    read = {Path(p).name for p in opened if str(d) in p}
    assert not read & {"pytorch_model.bin", "model.pkl", "training_args.bin", "tokenizer.pkl"}, read


# ---------------------------------------------------------------------------------------------------- partial writes
def test_an_interrupted_report_leaves_nothing_and_keeps_the_earlier_one(tmp_path, monkeypatch):
    import agents.report as report

    earlier = tmp_path / "report"
    earlier.mkdir()
    (earlier / "report.json").write_text("{}")
    with pytest.raises(FileExistsError):
        write_report({"results": []}, earlier)
    assert (earlier / "report.json").read_text() == "{}"

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "pareto_plot", killed)
    minimal = {"model": "m", "created": "now", "machine": {"platform": "p"}, "tasks": {}, "rates": [], "results": [],
               "methods": [], "examples": []}  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        write_report(minimal, tmp_path / "new")
    assert not (tmp_path / "new").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".new")]


# ---------------------------------------------------------------------------------------------------- untrusted files
def test_export_refuses_a_checkpoint_outside_a_run_directory(tmp_path):
    from agents.export import main as export_main
    from agents.export import resolve_checkpoint

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    inside = run / "checkpoints" / "ckpt_000000128.zip"
    inside.write_bytes(b"zip")
    assert resolve_checkpoint(run) == (inside, run / "config.json")
    assert resolve_checkpoint(inside) == (inside, run / "config.json")
    stray = tmp_path / "downloads" / "model.zip"  # a zip someone shared: a pickle, never loaded by default
    stray.parent.mkdir()
    stray.write_bytes(b"zip")
    with pytest.raises(PermissionError, match="pickled objects.*--config"):
        resolve_checkpoint(stray)
    dropped = run / "other.zip"  # a zip dropped next to a config.json is not one of the run's checkpoints
    dropped.write_bytes(b"zip")
    with pytest.raises(PermissionError):
        resolve_checkpoint(dropped)
    assert resolve_checkpoint(stray, config=run / "config.json") == (stray, run / "config.json")
    (run / "config.json").unlink()  # a run directory without its config: say what is missing
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        resolve_checkpoint(inside)
    with pytest.raises(SystemExit, match="not inside a run directory"):
        export_main(["--checkpoint", str(stray), "--out", str(tmp_path / "reducer")])
    assert not (tmp_path / "reducer").exists()
