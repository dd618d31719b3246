"""Online recall service: versioned artifacts, an HTTP API, live state in SQLite.

- :func:`build` fits a pipeline and writes an artifact version; :func:`load_artifact` reads it.
- :func:`create_app` makes the FastAPI app for :class:`ServeSettings`.
"""

from llmrecall.serve.artifacts import Artifact, build, load_artifact
from llmrecall.serve.settings import ServeSettings, load_settings


def create_app(settings: ServeSettings):
    from llmrecall.serve.app import create_app as _create

    return _create(settings)


__all__ = ["Artifact", "ServeSettings", "build", "create_app", "load_artifact", "load_settings"]
