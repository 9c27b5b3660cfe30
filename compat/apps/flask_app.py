"""The same producer in Flask; nothing celeriac-specific.

    PYTHONPATH=compat CELERY_BROKER_URL=... CELERY_RESULT_BACKEND=... \
    flask --app apps.flask_app run
"""
from celery.result import AsyncResult
from flask import Flask, jsonify, request

from myapp.celery import app as celery_app
from myapp.tasks import process_document

app = Flask(__name__)


@app.post("/process")
def process():
    data = request.get_json(silent=True) or {}
    given = {k: data[k] for k in ("text", "content_b64", "url") if data.get(k) is not None}
    if len(given) != 1:
        return jsonify(error="give exactly one of text, content_b64, url"), 422
    job = process_document.delay(given, filename=data.get("filename"),
                                 document_type=data.get("document_type", "generic"),
                                 options=data.get("options"))
    return jsonify(job_id=job.id), 202


@app.get("/job/<job_id>/status")
def status(job_id):
    res = AsyncResult(job_id, app=celery_app)
    # One backend read: state and info of the same moment (res.state and
    # res.info are separate reads, and a job can finish in between).
    meta = res.backend.get_task_meta(res.id)
    state, info = meta["status"], meta.get("result")
    body = {"state": state, "progress": None, "message": None, "result": None}
    if state == "PROCESSING" and isinstance(info, dict):
        body["progress"] = info.get("progress")
        body["message"] = info.get("message")
    elif state == "SUCCESS":
        body["progress"] = 100
        body["result"] = info
    elif state == "FAILURE":
        body["message"] = f"{type(info).__name__}: {info}"
    return jsonify(body)
