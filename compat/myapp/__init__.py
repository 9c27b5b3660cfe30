"""myapp - a producer package written the way Celery users write theirs.

Nothing in it knows about celeriac: the FastAPI/Flask apps in compat/apps import
`myapp.tasks` and call `.delay()`, and the worker is told the Python names with
`--task-alias myapp.tasks.process_document=process_document`.
"""
from .celery import app

__all__ = ["app"]
