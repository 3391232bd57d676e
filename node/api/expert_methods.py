"""JSON-RPC methods of the expert service: generation and the serving registry."""

from __future__ import annotations

from typing import Any

from chain.errors import BlyanError
from node.api.client import RPCError
from node.api.params import INFERENCE_FAILED, bad_params, is_int
from node.api.services import Services

MAX_PROMPT_CHARS = 4096
MAX_GENERATE_TOKENS = 256
PLAN_NAMES = ("auto", "dynamic", "static_delegate", "pipeline")
"""Plan types `blyan_generate` takes (`node.experts.plan_select`; api does not import experts)."""


async def generate(services: Services, args: dict[str, Any]) -> dict[str, Any]:
    prompt = args["prompt"]
    if not isinstance(prompt, str) or not 0 < len(prompt) <= MAX_PROMPT_CHARS:
        raise bad_params(f"prompt must be a string of 1 to {MAX_PROMPT_CHARS} characters")
    max_tokens = args.get("max_tokens", 16)
    if not is_int(max_tokens) or not 1 <= max_tokens <= MAX_GENERATE_TOKENS:
        raise bad_params(f"max_tokens must be an integer in [1, {MAX_GENERATE_TOKENS}]")
    temperature = args.get("temperature", 0.0)
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not 0 <= temperature <= 10:
        raise bad_params("temperature must be a number in [0, 10]")
    seed = args.get("seed", 0)
    if not is_int(seed) or not 0 <= seed < 2**63:
        raise bad_params("seed must be a non-negative integer")
    use_cache = args.get("cache", True)
    if not isinstance(use_cache, bool):
        raise bad_params("cache must be a boolean")
    plan = args.get("plan", "auto")
    if plan not in PLAN_NAMES:
        raise bad_params(f"plan must be one of {', '.join(PLAN_NAMES)}")
    try:
        return await services.experts.generate(prompt, max_tokens, float(temperature), seed, use_cache, plan)
    except ValueError as err:  # a prompt the tokenizer cannot encode, a plan the network cannot run
        raise bad_params(str(err)) from err
    except BlyanError as err:  # the service's typed failures (no serving node, every replica failed)
        raise RPCError(INFERENCE_FAILED, f"inference failed: {err}") from err


def get_experts(services: Services, args: dict[str, Any]) -> dict[str, Any]:
    return services.experts.describe()
