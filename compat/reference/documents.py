"""A Python process_document with the same contract as celeriac's built-in."""
import base64
import binascii
import collections
import hashlib
import json
import re
import time
import urllib.request

STOP = {"the", "a", "an", "and", "or", "of", "to", "in", "is", "it", "for", "on", "with"}


def _load(source):
    if isinstance(source, dict):
        if "content_b64" in source:
            return base64.b64decode(source["content_b64"], validate=True)
        if "text" in source:
            return source["text"].encode("utf-8")
        if "url" in source:
            source = source["url"]
        else:
            raise ValueError("source needs one of content_b64, text, url")
    if source.startswith(("http://", "https://")):
        with urllib.request.urlopen(source, timeout=30) as resp:
            return resp.read()
    try:
        return base64.b64decode(source, validate=True)
    except binascii.Error as exc:
        raise ValueError("source is neither base64 nor a URL") from exc


def _detect(text, filename):
    name = (filename or "").lower()
    for ext, kind in ((".md", "markdown"), (".csv", "csv"), (".json", "json"),
                      (".html", "html"), (".htm", "html")):
        if name.endswith(ext):
            return kind
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        try:
            json.loads(text)
            return "json"
        except ValueError:
            pass
    if re.match(r"(?is)<!doctype html|<html", stripped):
        return "html"
    if re.search(r"(?m)^#{1,6} ", text):
        return "markdown"
    return "text"


def process_document(task, source, filename=None, document_type="generic", options=None):
    options = options or {}
    chunk_size = int(options.get("chunk_size", 1000))

    def progress(pct, msg):
        task.update_state(state="PROCESSING", meta={"progress": pct, "message": msg})
        time.sleep(0.05)

    progress(0, "loading")
    data = _load(source)
    progress(20, "decoding")
    text = data.decode("utf-8", errors="replace")
    kind = _detect(text, filename)
    progress(40, "counting")
    words = re.findall(r"[A-Za-z0-9']+", text)
    terms = collections.Counter(w.lower() for w in words if len(w) > 2 and w.lower() not in STOP)
    progress(60, "chunking")
    chunks = [text[i:i + chunk_size] for i in range(0, len(text), chunk_size)] or [""]
    progress(80, "title")
    title = None
    m = re.search(r"(?m)^# (.+)$", text) if kind == "markdown" else None
    if m:
        title = m.group(1).strip()
    m = re.search(r"(?is)<title>(.*?)</title>", text) if kind == "html" else None
    if m:
        title = m.group(1).strip()
    progress(100, "done")
    return {
        "filename": filename,
        "document_type": document_type,
        "detected_type": kind,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "lines": len(text.splitlines()),
        "words": len(words),
        "top_terms": [[t, n] for t, n in terms.most_common(10)],
        "chunks": {"count": len(chunks), "size": chunk_size},
        "title": title,
    }
