"""The ``tokenkeep`` command: compress (stdin to stdout), and train / eval as aliases of train.py / eval.py."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from agents.cli import main
from policies import ProcessorConfig, TokenReducer
from policies.compress import main as compress
from policies.network import NetworkConfig

ROOT = Path(__file__).resolve().parents[1]
CONTEXT = "The code for otter is 1234. The sky is blue. Herons fish at dawn. The code for lynx is 5555.\n"
ENV = dict(os.environ, COLUMNS="200", OMP_NUM_THREADS="1")


@pytest.fixture(scope="module")
def reducer_dir(tiny_lm, tmp_path_factory):
    torch.manual_seed(0)
    net = NetworkConfig(d_model=32, n_layers=1, n_unit_layers=1, n_heads=2)
    reducer = TokenReducer.from_base_model(
        tiny_lm.model, tiny_lm.tokenizer, spec=tiny_lm.spec, processor=ProcessorConfig(max_len=64), network=net
    )
    return reducer.save_pretrained(tmp_path_factory.mktemp("cli") / "reducer")


def _compress(args, data: bytes):
    out = io.StringIO()
    return compress(args, stdin=io.BytesIO(data), stdout=out), out.getvalue()


def test_compress_prints_the_reduced_context_or_json(reducer_dir):
    base = ["--reducer", str(reducer_dir), "--question", "What is the code for lynx?"]
    rc, text = _compress([*base, "--rate", "0.4"], CONTEXT.encode())
    want = TokenReducer.from_pretrained(reducer_dir).reduce(CONTEXT, "What is the code for lynx?", rate=0.4)
    assert rc == 0 and text == want.text.strip() + "\n" and len(text) < len(CONTEXT)
    rc, text = _compress(
        [*base, "--target-tokens", "12", "--force-keep", "5555", "--force-keep", "otter", "--json"], CONTEXT.encode()
    )
    record = json.loads(text)
    assert rc == 0 and record["kept_tokens"] <= 12 == record["budget"]["target_tokens"]
    assert "5555" in record["text"] and "otter" in record["text"] and record["forced_tokens"] > 0
    assert record["kept_ratio"] == record["kept_tokens"] / record["original_tokens"]
    assert "".join(CONTEXT[s:e] for s, e in record["kept_spans"]) == record["text"]
    rc, text = _compress([*base, "--json"], b"\xef\xbb\xbf" + CONTEXT.encode())  # adaptive; BOM skipped
    assert rc == 0 and json.loads(text)["budget"] == {"rate": None, "target_tokens": None, "token_cost": None}


@pytest.mark.parametrize(
    "args,data,code,msg",
    [
        (["--reducer", "MISSING"], b"text", 1, "reducer directory not found"),
        ([], b"", 1, "standard input is empty"),
        ([], b" \n\t", 1, "whitespace only"),
        ([], b"caf\xe9", 1, "not UTF-8 (byte 0xe9 at position 3)"),
        (["--force-keep", "walrus"], CONTEXT.encode(), 1, "'walrus' does not occur"),
        (["--target-tokens", "2", "--force-keep", "The code for otter"], CONTEXT.encode(), 1, "budget of 2 tokens"),
    ],
)
def test_compress_errors_exit_1_with_the_cause(reducer_dir, capsys, args, data, code, msg):
    args = [*args, "--reducer", str(reducer_dir)] if "--reducer" not in args else args
    assert _compress(args, data)[0] == code
    assert msg in capsys.readouterr().err


@pytest.mark.parametrize(
    "args,msg",
    [
        (["--rate", "1.5"], "rate must be in (0, 1]"),
        (["--rate", "0.3", "--target-tokens", "5"], "not allowed with argument"),
        (["--rate", "0.3", "--token-cost", "0.2"], "adaptive mode only"),
        (["--unknown"], "unrecognized arguments"),
    ],
)
def test_compress_bad_command_line_exits_2(reducer_dir, capsys, args, msg):
    with pytest.raises(SystemExit) as exc:
        _compress(["--reducer", str(reducer_dir), *args], CONTEXT.encode())
    assert exc.value.code == 2 and msg in capsys.readouterr().err


def test_dispatch_help_and_unknown_command(capsys):
    assert main(["--help"]) == 0 and "compress" in capsys.readouterr().out
    assert main([]) == 2 and "usage: tokenkeep" in capsys.readouterr().err
    assert main(["frobnicate"]) == 2 and "unknown command 'frobnicate'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["compress", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "usage: tokenkeep compress" in out and "--force-keep TEXT" in out and "exit codes" in out


def test_compress_through_the_console_script_loads_no_training_code(reducer_dir):
    code = (
        "import sys; from agents.cli import main; rc = main(sys.argv[1:]); "
        "bad = [m for m in ('stable_baselines3', 'gymnasium', 'envs', 'agents.ppo', 'agents.config') "
        "if m in sys.modules]; print('LOADED', bad, file=sys.stderr); sys.exit(rc)"
    )
    args = ["compress", "--reducer", str(reducer_dir), "--rate", "0.5"]
    out = subprocess.run(
        [sys.executable, "-c", code, *args], input=CONTEXT, capture_output=True, text=True, cwd=ROOT, env=ENV
    )
    assert out.returncode == 0 and out.stdout.strip(), out.stderr
    assert "LOADED []" in out.stderr, out.stderr


@pytest.mark.parametrize("command,script", [("train", "train.py"), ("eval", "eval.py")])
def test_train_and_eval_are_the_scripts(command, script):
    """Same help (but for the program's name) and the same refusal of a bad value as train.py / eval.py."""
    tool = [sys.executable, "-m", "agents.cli", command]
    via_tool = subprocess.run([*tool, "--help"], capture_output=True, text=True, cwd=ROOT, env=ENV, check=True).stdout
    via_script = subprocess.run(
        [sys.executable, script, "--help"], capture_output=True, text=True, cwd=ROOT, env=ENV, check=True
    ).stdout
    assert f"usage: tokenkeep {command}" in via_tool and f"tokenkeep {command} --" in via_tool
    normalise = {"train": ("python train.py", "train.py"), "eval": ("python eval.py", "eval.py")}[command]
    for old in normalise:
        via_script = via_script.replace(old, f"tokenkeep {command}")
    assert via_tool.replace(" ", "") == via_script.replace(" ", "")  # column padding follows the name's length
    bad = (
        ["--preset", "nope", "--out", "/tmp/x"]
        if command == "train"
        else ["--tasks", "kv", "--rates", "2", "--out", "/tmp/x"]
    )
    tool_run = subprocess.run([*tool, *bad], capture_output=True, text=True, cwd=ROOT, env=ENV)
    script_run = subprocess.run([sys.executable, script, *bad], capture_output=True, text=True, cwd=ROOT, env=ENV)
    assert tool_run.returncode == script_run.returncode != 0
    assert tool_run.stderr.replace("tokenkeep " + command, "X") == script_run.stderr.replace(script, "X")
