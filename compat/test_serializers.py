"""Serializers and compression exactly as kombu 5.2 produces them."""
import base64
import json

import pytest

ARGS = ["ünïcødé", 1, 2.5, None, True, [1, 2, {"a": "b"}]]
KWARGS = {"nested": {"list": [1, "two", 3.0]}, "flag": False}


def _echo(app, **options):
    return app.send_task("examples.echo", args=ARGS, kwargs=KWARGS, **options)


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
def test_serializer_round_trip(worker, celery_app, serializer):
    r = _echo(celery_app, serializer=serializer)
    assert r.get(timeout=15) == {"args": ARGS, "kwargs": KWARGS}


def test_msgpack_integers_and_maps(worker, celery_app):
    r = celery_app.send_task("examples.add", args=(2**33, 1), serializer="msgpack")
    assert r.get(timeout=15) == 2**33 + 1


@pytest.mark.parametrize("compression", ["zlib", "bzip2"])
@pytest.mark.parametrize("serializer", ["json", "msgpack"])
def test_compression(worker, celery_app, compression, serializer):
    r = _echo(celery_app, compression=compression, serializer=serializer)
    assert r.get(timeout=15) == {"args": ARGS, "kwargs": KWARGS}


@pytest.mark.parametrize("compression", ["zlib", "bzip2"])
def test_compressed_large_payload(worker, celery_app, compression):
    """~2 MB of text compressed to a few KB on the wire, decompressed by the worker."""
    big = "All work and no play makes Jack a dull boy. " * 48000
    r = celery_app.send_task("examples.echo", args=[big], compression=compression)
    assert r.get(timeout=30) == {"args": [big], "kwargs": {}}


def test_process_document_with_zlib(worker, celery_app):
    text = "# Title\n\nsome words here\n"
    r = celery_app.send_task("process_document",
                             args=[base64.b64encode(text.encode()).decode(), "t.md"],
                             compression="zlib")
    result = r.get(timeout=30)
    assert result["detected_type"] == "markdown"
    assert result["bytes"] == len(text.encode())


def test_custom_headers_are_ignored(worker, celery_app):
    r = celery_app.send_task("examples.add", args=(1, 2),
                             headers={"x-trace-id": "abc", "x-nested": {"k": [1, 2]}})
    assert r.get(timeout=15) == 3


def test_json_escapes_nul_and_astral_characters(worker, celery_app):
    payload = json.loads('"\\u0000 nul, \\ud83d\\ude00 emoji, \\t tab"')
    r = celery_app.send_task("examples.echo", args=[payload])
    assert r.get(timeout=15) == {"args": [payload], "kwargs": {}}
