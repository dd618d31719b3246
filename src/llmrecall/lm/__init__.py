"""The language-model layer: embedders, generators (constrained decoding where the backend
has it), prompt templates, a persistent cache, untrusted-text handling, a scrubber for remote
calls, and ``lm-serve``. Every other package (the interest jobs included) uses these.

Local packaged models are the default and nothing leaves the machine unless a remote
(OpenAI-compatible) endpoint is configured. Heavy imports (torch, llama.cpp) happen only when
a backend that needs them is built.
"""

from llmrecall.lm.cache import LMCache, cache_key, content_key
from llmrecall.lm.cached import CachedEmbedder, CachedGenerator
from llmrecall.lm.config import CacheConfig, EmbedderConfig, GeneratorConfig, LMConfig
from llmrecall.lm.embedders import DEFAULT_EMBEDDER, Embedder, OpenAIEmbedder, get_embedder
from llmrecall.lm.errors import (
                                 BackendUnavailableError,
                                 EndpointError,
                                 GenerationParseError,
                                 LMError,
                                 MalformedResponseError,
)
from llmrecall.lm.generators import (
                                 ConstrainedDecoding,
                                 Generator,
                                 LlamaCppGenerator,
                                 OpenAIChatGenerator,
                                 constrained_decoder,
                                 get_generator,
                                 make_generator,
)
from llmrecall.lm.parse import (
                                 delimit,
                                 delimit_list,
                                 list_schema,
                                 parse_interests,
                                 parse_knowledge,
                                 parse_list,
                                 parse_queries,
                                 parse_titles,
)
from llmrecall.lm.prompts import PromptTemplate, available_templates, load_template
from llmrecall.lm.scrub import Scrubber
from llmrecall.lm.stores import LMStore, open_cache

__all__ = [
    "BackendUnavailableError", "CacheConfig", "CachedEmbedder", "CachedGenerator",
    "ConstrainedDecoding", "DEFAULT_EMBEDDER", "Embedder", "EmbedderConfig", "EndpointError",
    "GenerationParseError", "Generator", "GeneratorConfig", "LMCache", "LMConfig", "LMError",
    "LMStore",
    "LlamaCppGenerator", "MalformedResponseError", "OpenAIChatGenerator", "OpenAIEmbedder",
    "PromptTemplate", "Scrubber", "available_templates", "cache_key", "constrained_decoder",
    "content_key", "delimit", "delimit_list", "get_embedder", "get_generator", "list_schema",
    "load_template", "make_generator", "open_cache",
    "parse_interests", "parse_knowledge", "parse_list", "parse_queries", "parse_titles",
]
