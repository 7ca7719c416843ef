"""The inference engine: llama.cpp through ctypes, continuous batching, sampling, text."""

from llama_host.engine.engine import Engine, EngineConfig
from llama_host.engine.model import Model, ModelInfo, Target
from llama_host.engine.request import Cancellation, FinishReason, GenerationRequest, RequestHandle, Result, TokenOutput
from llama_host.engine.sampling import GREEDY, SamplingParams, grammar_from_json_schema

__all__ = [
    "GREEDY", "Cancellation", "Engine", "EngineConfig", "FinishReason", "GenerationRequest", "Model", "ModelInfo",
    "RequestHandle", "Result", "SamplingParams", "Target", "TokenOutput", "grammar_from_json_schema",
]
