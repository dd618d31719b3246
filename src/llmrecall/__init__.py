"""llmrecall: a recall (candidate-generation) engine where language models do real work."""

__version__ = "0.1.0"
