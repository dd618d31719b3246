"""``python -m llmrecall.serve build|serve ...``."""

from llmrecall.serve.cli import app

app()
