"""Token-level continuous batching for text generation (no HTTP).

    engine = GenerationEngine(model=model, tokenizer=tokenizer, max_batch_size=16)
    handle = engine.submit(GenerationRequest(prompt_ids=ids, max_tokens=32, temperature=0))
    for event in handle:          # or: async for event in handle
        print(event.text, end="")
    handle.usage                   # Usage(prompt_tokens, completion_tokens)

``request`` holds the shapes, ``scheduler`` the engine, ``handle`` the caller's stream,
``sampling`` next-token choice, ``stopping`` detokenization and stop conditions, ``chat`` the
chat-template rendering.
"""

from modelyard.engine.generation.chat import (
    DEFAULT_CHAT_TEMPLATE,
    ROLES,
    render_chat,
    validate_messages,
)
from modelyard.engine.generation.handle import GenerationHandle
from modelyard.engine.generation.request import (
    FINISH_REASONS,
    Choice,
    GenerationEvent,
    GenerationRequest,
    GenerationResult,
    Usage,
)
from modelyard.engine.generation.scheduler import EngineStats, GenerationEngine

__all__ = [
    "DEFAULT_CHAT_TEMPLATE",
    "ROLES",
    "FINISH_REASONS",
    "Choice",
    "EngineStats",
    "GenerationEngine",
    "GenerationEvent",
    "GenerationHandle",
    "GenerationRequest",
    "GenerationResult",
    "Usage",
    "render_chat",
    "validate_messages",
]
