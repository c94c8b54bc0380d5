"""Hostile uploads and the locked service: every attack gets a named 4xx (or an error line from predict), memory stays
bounded, the server keeps answering; the token lock; no server path, secret or patient data in any response."""

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from cxrlab.cli import main
from cxrlab.core.runs import RunDir
from cxrlab.serve.app import create_app
from tests import hostile

TOKEN = "s3cret-token-for-tests-0123456789"


def png(image: Image.Image, format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return buffer.getvalue()


def xray_like(run, side: int = 300) -> bytes:
    """A val image of the run's data set, scaled up to side x side px: one the model classifies."""
    from cxrlab.data.task import load_task

    cfg = RunDir(run).load_config()
    image = load_task(cfg.data_root, cfg.size, cfg.classes, splits=("val",)).splits["val"].images[0].numpy()
    return png(Image.fromarray(image).resize((side, side), Image.BILINEAR))


@pytest.fixture(scope="module")
def client(exported_run):
    return TestClient(create_app(exported_run))


@pytest.fixture(scope="module")
def hostile_files():
    return {
        "bomb.dcm": (hostile.deflate_bomb(1 << 30), 413, "inflates to more than"),
        "frame.dcm": (hostile.oversized_jpeg_frame(), 413, "9000 x 9000 px"),
        "lut.dcm": (hostile.malformed_voi_lut(), 422, "VOI LUT"),
        "slope.dcm": (hostile.zero_rescale_slope(), 422, "single value"),
        "short.dcm": (hostile.short_pixel_data(), 422, "less than expected"),
        "hsv.dcm": (hostile.unknown_photometric(), 422, "Photometric Interpretation 'HSV'"),
        "black.png": (png(Image.new("L", (512, 512), 0)), 422, "single value"),
        "movie.gif": (png(Image.linear_gradient("L"), "GIF"), 415, "not an image file"),
    }


def test_hostile_files_get_named_errors_and_the_server_keeps_answering(client, hostile_files, exported_run, tmp_path, capsys):
    for name, (data, status, words) in hostile_files.items():
        answer = client.post("/predict", files={"files": (name, data, "application/octet-stream")})
        assert answer.status_code == status and name in answer.json()["detail"] and words in answer.json()["detail"], (name, answer.text)
        assert client.get("/health").status_code == 200
    for name in ("lut.dcm", "slope.dcm"):
        (tmp_path / name).write_bytes(hostile_files[name][0])
    assert main(["predict", str(exported_run), str(tmp_path / "lut.dcm"), str(tmp_path / "slope.dcm")]) == 1
    err = capsys.readouterr().err
    assert "lut.dcm" in err and "slope.dcm" in err and "Traceback" not in err


def test_a_deflate_bomb_is_refused_with_bounded_memory(tmp_path):
    """3 MB that inflate to 3 GB: refused after inflating at most the cap (4 bytes per allowed pixel + 16 MB)."""
    bomb = tmp_path / "bomb.dcm"
    bomb.write_bytes(hostile.deflate_bomb(3 << 30))
    probe = (
        "import resource, sys; from cxrlab.data.images import decode_image; import pydicom.pixels; data = open(sys.argv[1], 'rb').read(); "
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try: decode_image(data, 'bomb.dcm', 28)\nexcept Exception as exc: print(type(exc).__name__)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)"
    )
    out = subprocess.run([sys.executable, "-c", probe, str(bomb)], capture_output=True, text=True, timeout=120).stdout.split()
    assert out[0] == "ImageTooLarge"
    assert float(out[1]) < 300, f"peak memory grew by {out[1]} MB"  # measured 2026-12-01: about 220 MB


def test_a_request_is_bounded_as_a_whole_and_one_bad_file_does_not_sink_the_others(exported_run):
    client = TestClient(create_app(exported_run, max_files=3, max_request_mp=0.2))
    good = xray_like(exported_run)  # 0.09 MP
    many = client.post("/predict", files=[("files", (f"{i}.png", good, "image/png")) for i in range(4)])
    assert many.status_code == 413 and "4 files" in many.json()["detail"] and "at most 3" in many.json()["detail"]
    mixed = client.post(
        "/predict",
        files=[
            ("files", ("a.png", good, "image/png")),
            ("files", ("notes.txt", b"hello", "text/plain")),
            ("files", ("b.png", good, "image/png")),
        ],
    )
    assert mixed.status_code == 200
    a, notes, b = mixed.json()["results"]
    assert (
        a["in_distribution"]
        and a["class"]
        and b["class"]
        and notes["status"] == 415
        and "notes.txt" in notes["error"]
        and "class" not in notes
    )
    over = client.post("/predict", files=[("files", (f"{i}.png", good, "image/png")) for i in range(3)]).json()["results"]
    assert [r.get("status") for r in over] == [None, None, 413] and "decoded pixels" in over[2]["error"]


def test_a_chunked_body_over_the_limit_is_refused_as_it_arrives(exported_run):
    client = TestClient(create_app(exported_run, max_upload_mb=0.05))
    boundary = "cxrlab-boundary"
    body = (
        (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="x.png"\r\nContent-Type: image/png\r\n\r\n').encode()
        + bytes(200_000)
        + f"\r\n--{boundary}--\r\n".encode()
    )

    def chunks():  # no Content-Length: the size is only known as it arrives
        for i in range(0, len(body), 16384):
            yield body[i : i + 16384]

    answer = client.post("/predict", content=chunks(), headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert answer.status_code == 413 and "limit of 0.05 MB" in answer.json()["detail"]


def test_the_token_locks_everything_but_health_and_nothing_is_decoded_without_it(exported_run, monkeypatch):
    app = create_app(exported_run, token=TOKEN)
    client = TestClient(app)
    upload = {"files": ("a.png", xray_like(exported_run), "image/png")}
    monkeypatch.setattr(app.state.service, "decode", lambda *a, **k: pytest.fail("decoded without a token"))
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": TOKEN}):
        answer = client.post("/predict", files=upload, headers=headers)
        assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer"
        assert client.get("/model", headers=headers).status_code == 401
    assert client.get("/health").status_code == 200
    monkeypatch.undo()
    good = {"Authorization": f"Bearer {TOKEN}"}
    assert client.post("/predict", files=upload, headers=good).status_code == 200 and client.get("/model", headers=good).status_code == 200
    assert "trained on" not in client.get("/").text and "trained on" in client.get(f"/?token={TOKEN}").text
    assert 'id="login"' in client.get("/").text


def test_serving_beyond_this_machine_needs_a_token(exported_run, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CXRLAB_TOKEN", raising=False)
    assert main(["serve", str(exported_run), "--host", "0.0.0.0"]) == 2
    assert "needs an access token" in capsys.readouterr().err
    (tmp_path / "empty").write_text("\n")
    assert main(["serve", str(exported_run), "--host", "0.0.0.0", "--token-file", str(tmp_path / "empty")]) == 2
    assert "is empty" in capsys.readouterr().err
    (tmp_path / "short").write_text("abc")
    assert main(["serve", str(exported_run), "--token-file", str(tmp_path / "short")]) == 2
    assert "at least 16 characters" in capsys.readouterr().err


def test_no_response_names_a_server_path_a_secret_or_patient_data(client, exported_run):
    cfg = RunDir(exported_run).load_config()
    dicom = hostile.dicom_bytes((np.arange(64 * 64).reshape(64, 64) % 4096).astype(np.uint16))  # PatientName Doe^Jane, PatientID PID-0042
    texts = [
        client.get("/model").text,
        client.get("/").text,
        client.post("/predict", files={"files": ("scan.dcm", dicom, "application/dicom")}).text,
        client.post("/predict", files={"files": ("notes.txt", b"x", "text/plain")}).text,
    ]
    card = json.loads(texts[0])
    assert card["training"]["model"] == cfg.model and card["data"]["kind"] == "phantom" and "file" not in card["data"]
    for text in texts:
        for secret in (
            str(Path(exported_run).resolve()),
            str(Path(cfg.data_root).resolve()),
            "data_root",
            "tracking_uri",
            "Doe^Jane",
            "PID-0042",
        ):
            assert secret not in text
