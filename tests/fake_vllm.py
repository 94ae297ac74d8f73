"""An in-process stand-in for a vLLM server: the JSON shapes of its HTTP API, computed by a tiny HF model.

Serves ``GET /v1/models``, ``GET /health``, ``POST /tokenize``, ``/detokenize`` and ``/v1/completions`` (token-id
prompts; ``prompt_logprobs``, ``logprobs`` with ``return_tokens_as_token_ids``, greedy ``max_tokens``) the way
vLLM answers them, so the HTTP backend's batching, parsing, retries and checks run in ``make test`` without
vLLM. The real server is tested by ``make test-vllm`` (tests/test_vllm_server.py).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch


class FakeVLLM:
    """A fake vLLM server on 127.0.0.1 (a free port), backed by ``model`` and ``tokenizer``.

    Attributes:
        name: The served model name.
        fail_next: Answer this many next requests with HTTP 503 (to exercise retries).
        delay: Seconds to sleep in every completion (to observe concurrency).
        served_tokenizer: Tokenizer used by /tokenize and /detokenize (default: ``tokenizer``).
        calls: Paths of the requests received, in order.
        max_concurrent: The most completions in progress at once.
    """

    def __init__(self, model: Any, tokenizer: Any, name: str = "tiny-llama") -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.served_tokenizer = tokenizer
        self.name = name
        self.fail_next = 0
        self.delay = 0.0
        self.calls: list[str] = []
        self.max_concurrent = 0
        self._active = 0
        self._lock = threading.Lock()
        self._model_lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """Base URL (``http://127.0.0.1:PORT``)."""
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeVLLM:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    # ------------------------------------------------------------------ model
    @torch.inference_mode()
    def _logprobs(self, ids: list[int]) -> torch.Tensor:
        """``[len(ids), vocab]`` log-distributions of the next token after each prefix."""
        with self._model_lock:
            logits = self.model(torch.tensor([ids])).logits[0].float()
        return torch.log_softmax(logits, -1)

    def _entry(self, lp: torch.Tensor, token: int, k: int) -> dict[str, Any]:
        order = torch.argsort(lp, descending=True)
        rank = int((lp > lp[token]).sum()) + 1
        out = {str(token): {"logprob": float(lp[token]), "rank": rank, "decoded_token": self.tokenizer.decode([token])}}
        for r, t in enumerate(order[:k].tolist(), start=1):
            out.setdefault(str(t), {"logprob": float(lp[t]), "rank": r, "decoded_token": self.tokenizer.decode([t])})
        return out

    def completions(self, body: dict[str, Any]) -> dict[str, Any]:
        """The ``/v1/completions`` response for a request with token-id prompts."""
        prompts = body["prompt"]
        if prompts and isinstance(prompts[0], int):
            prompts = [prompts]
        choices = []
        for index, ids in enumerate(prompts):
            choice: dict[str, Any] = {"index": index, "text": "", "finish_reason": "length"}
            k = body.get("prompt_logprobs")
            if k is not None:
                lp = self._logprobs(ids)
                choice["prompt_logprobs"] = [None] + [self._entry(lp[i - 1], ids[i], k) for i in range(1, len(ids))]
            generated, tops, seq = [], [], list(ids)
            for _ in range(body.get("max_tokens", 16)):
                lp = self._logprobs(seq)[-1]
                t = int(lp.argmax())
                generated.append(t)
                if body.get("logprobs") is not None:
                    n = lp.numel() if body["logprobs"] == -1 else body["logprobs"]
                    tops.append(
                        {f"token_id:{i}": float(lp[i]) for i in torch.argsort(lp, descending=True)[:n].tolist()}
                    )
                if t == self.tokenizer.eos_token_id:
                    break
                seq.append(t)
            if body.get("logprobs") is not None:
                choice["logprobs"] = {"top_logprobs": tops, "tokens": [f"token_id:{t}" for t in generated]}
            if body.get("return_token_ids"):
                choice["token_ids"] = generated
            choices.append(choice)
        return {"object": "text_completion", "model": self.name, "choices": choices}

    # ------------------------------------------------------------------ HTTP
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _send(self, code: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _failing(self) -> bool:
                with fake._lock:
                    fake.calls.append(self.path)
                    if fake.fail_next > 0:
                        fake.fail_next -= 1
                        return True
                return False

            def do_GET(self) -> None:
                if self._failing():
                    return self._send(503, {"error": {"message": "busy", "code": 503}})
                if self.path == "/v1/models":
                    card = {"id": fake.name, "object": "model", "root": fake.name, "max_model_len": 1024}
                    return self._send(200, {"object": "list", "data": [card]})
                if self.path == "/health":
                    return self._send(200, {})
                return self._send(404, {"error": {"message": f"no route {self.path}", "code": 404}})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self._failing():
                    return self._send(503, {"error": {"message": "busy", "code": 503}})
                model = body.get("model")
                if model is not None and model != fake.name:
                    msg = f"The model `{model}` does not exist."
                    return self._send(404, {"error": {"message": msg, "code": 404}})
                tok = fake.served_tokenizer
                if self.path == "/tokenize":
                    ids = tok(body["prompt"], add_special_tokens=body.get("add_special_tokens", True))["input_ids"]
                    return self._send(200, {"count": len(ids), "max_model_len": 1024, "tokens": list(ids)})
                if self.path == "/detokenize":
                    return self._send(200, {"prompt": tok.decode(body["tokens"])})
                if self.path == "/v1/completions":
                    with fake._lock:
                        fake._active += 1
                        fake.max_concurrent = max(fake.max_concurrent, fake._active)
                    try:
                        time.sleep(fake.delay)
                        return self._send(200, fake.completions(body))
                    finally:
                        with fake._lock:
                            fake._active -= 1
                return self._send(404, {"error": {"message": f"no route {self.path}", "code": 404}})

        return Handler
