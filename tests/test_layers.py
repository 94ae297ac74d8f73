"""Dependencies point down: policies/ (what ships) <- envs/ <- agents/, checked by import-linter's contracts."""

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = str(Path(sys.executable).parent / "lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(root))
    return subprocess.run([LINT, "--no-cache"], cwd=root, env=env, capture_output=True, text=True)


def test_contracts_hold():
    out = _lint(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


def test_every_deployable_module_is_covered():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    adapter = next(c for c in config if c.get("forbidden_modules") == ["policies.sb3_policy"])
    modules = {f"policies.{p.stem}" for p in (ROOT / "policies").glob("*.py") if p.stem != "__init__"}
    packages = {f"policies.{p.parent.name}" for p in (ROOT / "policies").glob("*/__init__.py")}
    assert set(adapter["source_modules"]) == (modules | packages) - {"policies.sb3_policy"}


@pytest.mark.parametrize(
    "module,line",
    [
        ("policies/budget.py", "import agents.config"),  # upward: policies -> agents
        ("policies/processor.py", "from envs import examples"),  # upward: policies -> envs
        ("envs/core.py", "import agents.ppo"),  # upward: envs -> agents
        ("policies/reducer.py", "import stable_baselines3"),  # the deployable reducer must not need the trainer
        ("policies/network.py", "import policies.sb3_policy"),  # nor the SB3 adapter
        ("policies/integrations/langchain.py", "import agents.cli"),  # the RAG integrations ship too
        ("tokenkeep/__init__.py", "import envs.core"),  # the installed name loads no training code
    ],
)
def test_a_deliberate_upward_import_is_caught(tmp_path, module, line):
    for name in ("tokenkeep", "policies", "envs", "agents"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    assert _lint(tmp_path).returncode == 0  # the copy is clean before the change
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{line}  # noqa\n")
    out = _lint(tmp_path)
    assert out.returncode != 0 and "BROKEN" in out.stdout, out.stdout


def test_tokenkeep_is_the_deployable_api_under_the_installed_name():
    import policies
    import tokenkeep

    assert tokenkeep.__all__ == policies.__all__ and "TokenReducer" in tokenkeep.__all__
    assert all(getattr(tokenkeep, name) is getattr(policies, name) for name in policies.__all__)
    # importing it loads neither the trainer nor the training environment
    heavy = ("stable_baselines3", "gymnasium", "envs", "agents")
    code = f"import sys, tokenkeep; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_tokenkeep_integrations_are_the_policies_ones():
    pytest.importorskip("langchain_core")
    from policies.integrations.langchain import TokenKeepCompressor
    from tokenkeep.integrations.langchain import TokenKeepCompressor as Reexported

    assert Reexported is TokenKeepCompressor
