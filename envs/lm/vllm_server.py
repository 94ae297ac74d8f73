"""Start and stop a local vLLM server for a model spec (``make test-vllm``, ``bench/backend_throughput.py``).

Usage::

    python -m envs.lm.vllm_server --python .venv-vllm/bin/python --model smollm2-135m --port 8765 -- CMD [ARGS...]

starts ``python -m vllm.entrypoints.launchers.api_server.entry`` on 127.0.0.1 with the model's Hugging Face
directory (:func:`envs.lm.model_cache.model_directory`: for the embedded default, the cached conversion of its
GGUF file) served under the spec's name, waits until it answers, runs CMD with ``TOKENKEEP_VLLM_URL`` set to
the server's URL, then stops the server by its PID (SIGTERM to the process group it leads, which holds its
engine process; SIGKILL after a grace period) and exits with CMD's status. Without CMD it serves until Ctrl-C.

The flags are the ones that run vLLM's CPU build on a small machine: ``--dtype float32 --enforce-eager``
(startup in about 45 s instead of over 2 minutes, and no slower once running), ``--max-model-len 2048``,
``--max-logprobs -1`` (whole-vocabulary distributions for the ``kl`` reward) and
``VLLM_CPU_KVCACHE_SPACE`` (GiB of KV cache, default 2).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import requests

from envs.lm.model_cache import model_directory

ENTRY = "vllm.entrypoints.launchers.api_server.entry"
"""The module that starts vLLM's OpenAI-compatible server (the ``vllm`` console script is not installed by
the ``vllm-cpu`` package)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_command(python: str, model_dir: str, name: str, port: int, extra: Sequence[str] = ()) -> list[str]:
    """The command line that serves ``model_dir`` as ``name`` on ``127.0.0.1:port``."""
    return [
        python, "-m", ENTRY, "--model", model_dir, "--served-model-name", name, "--host", "127.0.0.1",
        "--port", str(port), "--dtype", "float32", "--max-model-len", "2048", "--enforce-eager",
        "--max-logprobs", "-1", *extra,
    ]  # fmt: skip


class VLLMServer:
    """A vLLM server subprocess: ``with VLLMServer(...) as server:`` starts it and waits; leaving stops it.

    Args:
        python: The vLLM venv's Python.
        model: Model spec to serve (served under this name).
        port: Port on 127.0.0.1 (0: a free one).
        log: File that receives the server's output.
        startup_timeout: Seconds to wait for the server to answer.
        extra: Further server flags.
    """

    def __init__(
        self,
        python: str,
        model: str,
        *,
        port: int = 0,
        log: str | os.PathLike[str] = "runs/vllm-server.log",
        startup_timeout: float = 600.0,
        extra: Sequence[str] = (),
    ) -> None:
        self.python = python
        self.model = model
        self.port = port or free_port()
        self.log = Path(log)
        self.startup_timeout = startup_timeout
        self.extra = list(extra)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """Base URL, ``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def spec(self) -> str:
        """The remote model spec that scores with this server (and expects its model)."""
        return f"vllm+{self.url}?model={self.model}&features={self.model}"

    def start(self) -> None:
        """Start the server and wait until ``/v1/models`` lists the model.

        Raises:
            RuntimeError: If the server exits or does not answer within ``startup_timeout`` (the log's tail
                is in the message).
        """
        model_dir = str(model_directory(self.model))
        cmd = server_command(self.python, model_dir, self.model, self.port, self.extra)
        env = dict(os.environ)
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as log:
            # Its own session, so its PID is also the id of the process group that holds its engine process.
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        print(f"vLLM server: PID {self.proc.pid}, {self.url}, log {self.log}", flush=True)
        t0 = time.monotonic()
        while time.monotonic() - t0 < self.startup_timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the vLLM server exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                ids = [c["id"] for c in requests.get(self.url + "/v1/models", timeout=5).json()["data"]]
                if self.model in ids:
                    print(f"vLLM server: ready after {time.monotonic() - t0:.0f} s", flush=True)
                    return
            except (requests.RequestException, ValueError, KeyError):
                pass
            time.sleep(1.0)
        self.stop()
        raise RuntimeError(f"the vLLM server did not answer within {self.startup_timeout:.0f} s:\n{self.tail()}")

    def stop(self, grace: float = 30.0) -> None:
        """Stop the server by its PID: SIGTERM to its process group, then SIGKILL after ``grace`` seconds."""
        if self.proc is None or self.proc.poll() is not None:
            return
        pid = self.proc.pid
        os.killpg(pid, signal.SIGTERM)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(pid, signal.SIGKILL)
            self.proc.wait()
        try:  # the engine process may outlive the API server by a moment
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        print(f"vLLM server: stopped PID {pid}", flush=True)

    def tail(self, lines: int = 40) -> str:
        """The last lines of the server's log."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> VLLMServer:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns CMD's exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    cmd: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, cmd = argv[:cut], argv[cut + 1 :]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--python", default=".venv-vllm/bin/python", help="Python of the venv that has vLLM")
    ap.add_argument("--model", default="smollm2-135m", help="model spec to serve")
    ap.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one)")
    ap.add_argument("--log", default="runs/vllm-server.log", help="server log file")
    ap.add_argument("--startup-timeout", type=float, default=600.0, help="seconds to wait for the server")
    args = ap.parse_args(argv)
    server = VLLMServer(args.python, args.model, port=args.port, log=args.log, startup_timeout=args.startup_timeout)
    try:
        with server:
            print(f"serving {args.model}: use --model '{server.spec}'", flush=True)
            if not cmd:
                while True:
                    time.sleep(3600)
            env = dict(os.environ, TOKENKEEP_VLLM_URL=server.url, TOKENKEEP_VLLM_MODEL=args.model)
            return subprocess.call(cmd, env=env)
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
