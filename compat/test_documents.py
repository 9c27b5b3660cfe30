"""The built-in process_document with real documents, as users' producers send them."""
import base64
import hashlib
import http.server
import json
import threading
import uuid
from pathlib import Path

import pytest

from helpers import poll_states

DATA = Path(__file__).resolve().parent / "data"
DOCS = {
    "quarterly-report.md": ("markdown", "Quarterly Operations Report"),
    "sales.csv": ("csv", None),
    "product-page.html": ("html", "Gizmo 3000 Product Sheet"),
    "inventory.json": ("json", None),
}


def b64(data):
    return base64.b64encode(data).decode()


def check_basic(result, data, filename=None):
    assert isinstance(result, dict), result
    if filename is not None:
        assert result["filename"] == filename
    assert result["bytes"] == len(data)
    assert result["sha256"] == hashlib.sha256(data).hexdigest()
    # lines/words count the extracted text (markup removed), so only csv is exact.
    assert isinstance(result["lines"], int) and result["lines"] > 0
    if result["detected_type"] == "csv":
        assert result["lines"] == len(data.decode().splitlines())
    assert isinstance(result["words"], int) and result["words"] > 0
    assert isinstance(result["top_terms"], list)
    assert isinstance(result["chunks"], dict) and result["chunks"]["count"] >= 1


@pytest.mark.parametrize("filename", sorted(DOCS))
def test_document_types(worker, celery_app, filename):
    data = (DATA / filename).read_bytes()
    r = celery_app.send_task("process_document", args=[b64(data)],
                             kwargs={"filename": filename, "document_type": "report"})
    result = r.get(timeout=30)
    check_basic(result, data, filename)
    kind, title = DOCS[filename]
    assert result["detected_type"] == kind
    if title is not None:
        assert result["title"] == title


def test_detects_type_without_filename(worker, celery_app):
    data = (DATA / "quarterly-report.md").read_bytes()
    result = celery_app.send_task("process_document", args=[b64(data)]).get(timeout=30)
    assert result["detected_type"] == "markdown"
    assert result["bytes"] == len(data)


def test_top_terms_mention_frequent_words(worker, celery_app):
    text = ("invoice " * 30 + "contract " * 10 + "misc\n") * 3
    result = celery_app.send_task("process_document", args=[{"text": text}]).get(timeout=30)
    flat = repr(result["top_terms"])
    assert "invoice" in flat and "contract" in flat
    assert flat.index("invoice") < flat.index("contract")


@pytest.mark.parametrize("kind", ["text", "content_b64"])
def test_dict_sources(worker, celery_app, kind):
    text = "# Dict source\n\nhello world\n"
    source = {"text": text} if kind == "text" else {"content_b64": b64(text.encode())}
    result = celery_app.send_task("process_document", args=[source],
                                  kwargs={"filename": "d.md"}).get(timeout=30)
    check_basic(result, text.encode(), "d.md")
    assert result["title"] == "Dict source"


@pytest.fixture
def http_docs():
    """A local HTTP server on 127.0.0.1 serving compat/data/."""
    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(DATA), **kw)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("as_dict", [False, True])
def test_url_source(worker, celery_app, http_docs, as_dict):
    url = f"{http_docs}/sales.csv"
    source = {"url": url} if as_dict else url
    data = (DATA / "sales.csv").read_bytes()
    result = celery_app.send_task("process_document", args=[source],
                                  kwargs={"filename": "sales.csv"}).get(timeout=60)
    check_basic(result, data, "sales.csv")
    assert result["detected_type"] == "csv"


def test_url_not_found_fails(worker, celery_app, http_docs):
    r = celery_app.send_task("process_document", args=[f"{http_docs}/missing.txt"])
    r.get(timeout=60, propagate=False)
    assert r.state == "FAILURE"


def test_bad_source_fails_cleanly(worker, celery_app):
    r = celery_app.send_task("process_document", args=["%%% not base64 and not a url %%%"])
    exc = r.get(timeout=30, propagate=False)
    assert r.state == "FAILURE"
    assert isinstance(exc, Exception)


def _big_markdown():
    base = (DATA / "quarterly-report.md").read_text()
    paragraphs = [p for p in base.split("\n\n") if len(p) > 100]
    body = "\n\n".join(f"## Section {i}\n\n{paragraphs[i % len(paragraphs)]}" for i in range(40000))
    return (base + "\n" + body).encode()


def test_progress_reported_for_large_document(worker, celery_app, shared_redis):
    """A ~13 MB markdown document: every PROCESSING state is PUBLISHed with progress and
    message (as AsyncResult.get() listeners see them), states are pollable, then SUCCESS."""
    data = _big_markdown()
    task_id = str(uuid.uuid4())
    pubsub = shared_redis.client(1).pubsub()
    pubsub.subscribe(f"celery-task-meta-{task_id}")
    try:
        r = celery_app.send_task("process_document", args=[b64(data)], task_id=task_id,
                                 kwargs={"filename": "big.md", "options": {"chunk_size": 500}})
        seen = poll_states(r, timeout=120, interval=0.01)
        published = []
        while True:
            msg = pubsub.get_message(timeout=1.0)
            if msg is None:
                break
            if msg["type"] == "message":
                published.append(json.loads(msg["data"]))
    finally:
        pubsub.close()
    states = [m["status"] for m in published]
    processing = [m["result"] for m in published if m["status"] == "PROCESSING"]
    assert len(processing) >= 2, f"PROCESSING states published: {states}"
    for info in processing:
        assert isinstance(info, dict)
        assert 0 <= info["progress"] <= 100
        assert isinstance(info["message"], str) and info["message"]
    values = [i["progress"] for i in processing]
    assert values == sorted(values), values
    assert states[-1] == "SUCCESS", states
    assert seen[-1][0] == "SUCCESS", seen[-1]
    result = r.result
    assert result["bytes"] == len(data)
    assert result["sha256"] == hashlib.sha256(data).hexdigest()
    assert result["chunks"]["count"] >= len(data) // 600


def test_alias_delay_users_style(worker, myapp):
    """myapp.tasks.process_document.delay(...) reaches the built-in via --task-alias."""
    from myapp.tasks import process_document

    data = (DATA / "product-page.html").read_bytes()
    result = process_document.delay(b64(data), filename="product-page.html",
                                    document_type="web").get(timeout=30)
    check_basic(result, data, "product-page.html")
    assert result["detected_type"] == "html"
