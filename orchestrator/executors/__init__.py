"""Executors run brick configurations on a model: one protocol (`base`), a transformers and a vLLM implementation.

Both pass the same conformance suite (tests/integration/test_executor_conformance.py). Heavy imports (torch,
vllm) happen inside each implementation.
"""

from orchestrator.executors.base import Executor, GenerationRequest, UnsupportedConfigError

__all__ = ["Executor", "GenerationRequest", "UnsupportedConfigError"]
