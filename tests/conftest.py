"""Shared fixtures: generated GGUF models (built once, cached in .cache/models) and loaded ones."""

from __future__ import annotations

import logging

import pytest

from llama_host import modelgen
from llama_host.engine.context import Context
from llama_host.engine.model import Model

logging.getLogger("llama_host.llama_cpp").setLevel(logging.WARNING)


@pytest.fixture(scope="session")
def model_path():
    """``model_path("spm", "q4_0")``: the file of a preset, written on first use."""
    return lambda preset, quant=None: modelgen.build(preset, quant=quant)


@pytest.fixture(scope="session")
def tiny_model(model_path):
    with Model(model_path("tiny")) as model:
        yield model


@pytest.fixture(scope="session")
def spm_model(model_path):
    with Model(model_path("spm")) as model:
        yield model


@pytest.fixture(scope="session")
def bpe_model(model_path):
    with Model(model_path("bpe")) as model:
        yield model


@pytest.fixture
def tiny_ctx(tiny_model):
    with Context(tiny_model, n_ctx=512, n_batch=64) as ctx:
        yield ctx
