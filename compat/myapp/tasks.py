"""Task stubs: the producer side only needs names and signatures.

The bodies are a small Python version of what celeriac's built-ins do, so the same
module also runs under the real Python worker (see compat/reference/) when the test
suite is pointed at it with COMPAT_WORKER=python.
"""
from .celery import app


@app.task(bind=True)
def process_document(self, source, filename=None, document_type="generic", options=None):
    from reference.documents import process_document as impl

    return impl(self, source, filename, document_type, options)


@app.task
def add(x, y):
    return x + y
