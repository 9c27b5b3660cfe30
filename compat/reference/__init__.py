"""Reference implementations run by the real Python Celery worker.

Used only to check that the compat tests expect what real Celery does
(COMPAT_WORKER=python); celeriac never loads this package.
"""
