"""A FastAPI producer written the way users write theirs; nothing celeriac-specific.

    PYTHONPATH=compat CELERY_BROKER_URL=redis://127.0.0.1:6379/0 \
    CELERY_RESULT_BACKEND=redis://127.0.0.1:6379/1 uvicorn apps.fastapi_app:app

POST /process            {"text"|"content_b64"|"url", "filename", "document_type", "options"}
                         -> {"job_id"}
GET  /job/{job_id}/status -> {"state", "progress", "message", "result"}
"""
from typing import Any, Dict, Optional

from celery.result import AsyncResult
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from myapp.celery import app as celery_app
from myapp.tasks import process_document

app = FastAPI(title="Document processing")


class ProcessRequest(BaseModel):
    text: Optional[str] = None
    content_b64: Optional[str] = None
    url: Optional[str] = None
    filename: Optional[str] = None
    document_type: str = "generic"
    options: Optional[Dict[str, Any]] = None


@app.post("/process", status_code=202)
def process(req: ProcessRequest):
    given = {k: v for k, v in (("text", req.text), ("content_b64", req.content_b64),
                               ("url", req.url)) if v is not None}
    if len(given) != 1:
        raise HTTPException(status_code=422, detail="give exactly one of text, content_b64, url")
    job = process_document.delay(given, filename=req.filename,
                                 document_type=req.document_type, options=req.options)
    return {"job_id": job.id}


@app.get("/job/{job_id}/status")
def status(job_id: str):
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
    return body
