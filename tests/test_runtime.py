"""Process settings of the train and eval commands (agents/runtime.py)."""

import platform
import subprocess
import sys

import pytest

CALL = "from agents.runtime import reuse_freed_memory; print(reuse_freed_memory())"


def _call(env_value: str | None) -> str:
    import os

    env = {k: v for k, v in os.environ.items() if k != "TOKENKEEP_MALLOC"}
    if env_value is not None:
        env["TOKENKEEP_MALLOC"] = env_value
    # a fresh process: the setting is process-wide, and the test process keeps glibc's defaults
    return subprocess.run([sys.executable, "-c", CALL], env=env, capture_output=True, text=True, check=True).stdout


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_reuse_freed_memory_applies_on_glibc():
    assert _call(None).strip() == "True"


def test_tokenkeep_malloc_default_keeps_glibc_defaults():
    assert _call("default").strip() == "False"
