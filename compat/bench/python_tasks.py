"""Python Celery 5.2 task module for the benchmark in bench.py.

It defines the two tasks the benchmark sends, under the names celeriac uses:

  examples.add(x, y)      same as celeriac's examples.so plugin task
  process_document(...)   a pure-Python version of celeriac's built-in that does
                          comparable work on text documents: the same stages
                          (load, detect, extract, analyse, chunk), one PROCESSING
                          progress state per stage plus "Done" (6 update_state
                          calls, as celeriac stores), sha256, character/line/word
                          counts, top 10 terms (3+ letters, same stop words, ties
                          alphabetical) and word-boundary chunking with per-chunk
                          index/start/length.

Broker and backend come from BENCH_BROKER_URL and BENCH_RESULT_BACKEND (bench.py
sets both and also passes them as `celery -b ... --result-backend ...`).
"""
import base64
import binascii
import collections
import hashlib
import json
import os
import re
import time

from celery import Celery, signals

app = Celery(
    "bench",
    broker=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/0"),
    backend=os.environ.get("BENCH_RESULT_BACKEND", "redis://127.0.0.1:6379/1"),
)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_accept_content=["json"],
    result_expires=86400,  # celeriac's default, so both SETEX with the same TTL
    worker_prefetch_multiplier=4,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=True,
)


@signals.worker_ready.connect
def _threads_pool_wakeup(sender=None, **kwargs):
    """Workaround for celery/celery#6941 (Celery 5.2, -P threads): the event loop
    does not notice that a pool thread finished, so once the prefetched messages
    are done the worker sleeps until some timer or socket event wakes it, seconds
    later. A no-op timer every BENCH_THREADS_WAKEUP seconds (default 0.005; 0 turns
    the workaround off) bounds that stall, as suggested in the issue."""
    interval = float(os.environ.get("BENCH_THREADS_WAKEUP", "0.005"))
    pool = getattr(sender, "pool", None)
    if interval > 0 and type(pool).__module__ == "celery.concurrency.thread":
        sender.timer.call_repeatedly(interval, lambda: None)


@app.task(name="examples.add")
def add(x, y):
    return x + y


# ---- process_document ---------------------------------------------------------

STOPWORDS = frozenset("""
about above after again against all also and any are aren because been before being
below between both but can could couldn did didn does doesn doing don down during each
few for from further had hadn has hasn have haven having her here hers herself him
himself his how into isn its itself just let may more most must myself nor not now off
once only other our ours ourselves out over own same shan she should shouldn some such
than that the their theirs them themselves then there these they this those through too
under until very was wasn were weren what when where which while who whom why will with
won would wouldn you your yours yourself yourselves
""".split())

EXTENSIONS = {".txt": "text", ".text": "text", ".md": "markdown", ".markdown": "markdown",
              ".csv": "csv", ".tsv": "csv", ".json": "json", ".html": "html", ".htm": "html"}
TERM_RE = re.compile(r"[^\W_]+")          # letters and digits (Unicode)
WS_RE = re.compile(r"[ \t\f\v]+")
TOP_TERMS = 10
MAX_CHUNK_ITEMS = 1000


def _load(source):
    if isinstance(source, dict):
        if "text" in source:
            return source["text"].encode("utf-8"), "text"
        if "content_b64" in source:
            return base64.b64decode(source["content_b64"], validate=True), "base64"
        raise ValueError("source needs one of text, content_b64")
    try:
        return base64.b64decode(source, validate=True), "base64"
    except binascii.Error as exc:
        raise ValueError("source is not base64") from exc


def _detect(text, filename):
    ext = os.path.splitext(filename or "")[1].lower()
    if ext in EXTENSIONS:
        return EXTENSIONS[ext], "filename"
    stripped = text.lstrip()
    if stripped[:1] in ("{", "["):
        try:
            json.loads(text)
            return "json", "content"
        except ValueError:
            pass
    if re.match(r"(?is)<!doctype html|<html", stripped):
        return "html", "content"
    if re.search(r"(?m)^#{1,6} ", text[:65536]):
        return "markdown", "content"
    return "text", "content"


def _top_terms(text):
    counts = collections.Counter()
    for m in TERM_RE.finditer(text):
        w = m.group(0).lower()
        if len(w.encode("utf-8")) > 64 or w in STOPWORDS:
            continue
        if sum(1 for c in w if not c.isdigit()) < 3:
            continue
        counts[w] += 1
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [[t, n] for t, n in ranked[:TOP_TERMS]]


def _chunks(text, size):
    """Tiles text with chunks of at most size characters, ending after whitespace
    when there is some in the chunk's second half and a hard cut would split a word."""
    items, pos, n, count = [], 0, len(text), 0
    while pos < n:
        end = min(pos + size, n)
        if end < n and not text[end].isspace():
            cut = max(text.rfind(" ", pos, end), text.rfind("\n", pos, end))
            if cut >= 0 and cut + 1 - pos >= size // 2:
                end = cut + 1
        if count < MAX_CHUNK_ITEMS:
            items.append({"index": count, "start": pos, "length": end - pos})
        count += 1
        pos = end
    return count, items


@app.task(name="process_document", bind=True)
def process_document(self, source, filename=None, document_type="generic", options=None):
    options = options or {}
    chunk_size = int(options.get("chunk_size", 1000))
    stages = []

    def progress(pct, msg):
        self.update_state(state="PROCESSING", meta={"progress": pct, "message": msg})

    def timed(name, fn):
        t0 = time.perf_counter()
        out = fn()
        stages.append({"name": name, "ms": round((time.perf_counter() - t0) * 1000, 3)})
        return out

    def load():
        data, kind = _load(source)
        progress(10, f"Received {len(data):,} bytes of {kind}")
        return data, kind

    data, source_kind = timed("load", load)

    def detect():
        raw = data[3:] if data.startswith(b"\xef\xbb\xbf") else data
        text = raw.decode("utf-8")  # not UTF-8 -> UnicodeDecodeError, task fails
        kind, by = _detect(text, filename)
        progress(20, f"Detected {kind} ({len(data):,} bytes)")
        return text, kind, by

    text, detected, detected_by = timed("detect", detect)

    def extract():
        clean = WS_RE.sub(" ", text)
        words = len(clean.split())
        progress(45, f"Extracted {words:,} words")
        return clean, words

    text, words = timed("extract", extract)

    def analyse():
        digest = hashlib.sha256(data).hexdigest()
        lines = text.count("\n") + (1 if text and not text.endswith("\n") else 0)
        terms = _top_terms(text)
        msg = f"Analysed {lines:,} lines" + (f"; top term '{terms[0][0]}'" if terms else "")
        progress(70, msg)
        return digest, lines, terms

    digest, lines, terms = timed("analyse", analyse)

    def chunk():
        count, items = _chunks(text, chunk_size)
        progress(90, f"Split into {count:,} chunks of up to {chunk_size:,} characters")
        return count, items

    chunk_count, chunk_items = timed("chunk", chunk)
    title = None
    if detected == "markdown":
        m = re.search(r"(?m)^# (.+)$", text)
        title = m.group(1).strip() if m else None
    result = {
        "filename": filename,
        "document_type": document_type,
        "detected_type": detected,
        "detected_by": detected_by,
        "source": source_kind,
        "bytes": len(data),
        "sha256": digest,
        "characters": len(text),
        "lines": lines,
        "words": words,
        "top_terms": terms,
        "title": title,
        "chunk_size": chunk_size,
        "chunks": {"count": chunk_count, "truncated": chunk_count > MAX_CHUNK_ITEMS,
                   "items": chunk_items},
        "text_preview": text[:200],
        "stages": stages,
    }
    progress(100, "Done")
    return result
