"""The FastAPI and Flask producers, in-process, against the real worker."""
import base64
import hashlib
import importlib
from pathlib import Path

import pytest

from conftest import users_env
from helpers import wait_for

DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="module", params=["fastapi", "flask"])
def client(request, shared_redis, myapp):
    with users_env(shared_redis):
        if request.param == "fastapi":
            from fastapi.testclient import TestClient

            module = importlib.import_module("apps.fastapi_app")
            with TestClient(module.app) as c:
                yield c
        else:
            module = importlib.import_module("apps.flask_app")
            module.app.testing = True
            yield module.app.test_client()


def _json(resp):
    """httpx (FastAPI TestClient) has .json(); Flask's test response has .get_json()."""
    return resp.json() if callable(getattr(resp, "json", None)) else resp.get_json()


def _poll_status(client, job_id, timeout=60):
    seen = []

    def done():
        resp = client.get(f"/job/{job_id}/status")
        assert resp.status_code == 200
        body = _json(resp)
        if not seen or seen[-1] != body:
            seen.append(body)
        return body["state"] in ("SUCCESS", "FAILURE")

    wait_for(done, timeout, f"job {job_id} to finish", interval=0.02)
    return seen


def _post(client, payload):
    resp = client.post("/process", json=payload)
    assert resp.status_code == 202, resp
    body = _json(resp)
    return body["job_id"]


def test_markdown_job_end_to_end(worker, client):
    data = (DATA / "quarterly-report.md").read_bytes()
    job_id = _post(client, {"content_b64": base64.b64encode(data).decode(),
                            "filename": "quarterly-report.md", "document_type": "report"})
    seen = _poll_status(client, job_id)
    final = seen[-1]
    assert final["state"] == "SUCCESS", seen
    assert final["progress"] == 100
    result = final["result"]
    assert result["detected_type"] == "markdown"
    assert result["sha256"] == hashlib.sha256(data).hexdigest()
    assert result["title"] == "Quarterly Operations Report"
    for body in seen:
        if body["state"] == "PROCESSING":
            assert 0 <= body["progress"] <= 100 and body["message"]


def test_text_csv_job(worker, client):
    text = (DATA / "sales.csv").read_text()
    job_id = _post(client, {"text": text, "filename": "sales.csv"})
    final = _poll_status(client, job_id)[-1]
    assert final["state"] == "SUCCESS"
    assert final["result"]["detected_type"] == "csv"
    assert final["result"]["bytes"] == len(text.encode())


def test_failed_job_reports_failure(worker, client):
    job_id = _post(client, {"url": "http://127.0.0.1:1/nothing-listens-here"})
    final = _poll_status(client, job_id)[-1]
    assert final["state"] == "FAILURE"
    assert final["message"]


def test_unknown_job_is_pending(worker, client):
    resp = client.get("/job/00000000-0000-0000-0000-000000000000/status")
    assert resp.status_code == 200
    body = _json(resp)
    assert body["state"] == "PENDING"


def test_bad_request_is_rejected(worker, client):
    assert client.post("/process", json={"filename": "x"}).status_code == 422
