"""The web service with FastAPI's TestClient: every route, every kind of bad input, DICOM, concurrency."""

import io
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from cxrlab.data.images import decode_dicom
from cxrlab.data.task import load_task
from cxrlab.errors import ConfigError, DamagedImage
from cxrlab.serve.app import DISCLAIMER, create_app


@pytest.fixture(scope="module")
def client(exported_run):
    return TestClient(create_app(exported_run))


@pytest.fixture(scope="module")
def xrays(exported_run):
    """Val images as PNG bytes, in odd sizes and modes, as a user would upload them."""
    from cxrlab.core.runs import RunDir

    cfg = RunDir(exported_run).load_config()
    images = load_task(cfg.data_root, 28, cfg.classes, splits=("val",)).splits["val"].images[:20].numpy()
    return [png(Image.fromarray(im).resize((97 + i, 80)).convert("RGB" if i % 2 else "L")) for i, im in enumerate(images)]


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def dicom(pixels: np.ndarray, photometric: str = "MONOCHROME2", window: tuple[float, float] | None = None) -> bytes:
    """A minimal DICOM file built with pydicom: 16-bit unsigned, 12 bits stored."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("x.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_the_service_runs_its_model_on_the_threads_it_is_given(exported_run, xrays):
    with TestClient(create_app(exported_run, threads=1)) as one:
        assert one.get("/model").json()["threads"] == 1
        assert one.post("/predict", files={"files": ("x.png", xrays[0], "image/png")}).status_code == 200
    with pytest.raises(ConfigError, match="threads must be at least 1"):
        create_app(exported_run, threads=0)


def test_health_model_page_and_docs(client):
    assert client.get("/health").json()["status"] == "ok"
    card = client.get("/model").json()
    assert card["trained_on_phantom"] is True and card["data"]["kind"] == "phantom"
    assert 0 <= card["metrics"]["test"]["roc_auc"] <= 1 and card["threshold"] == pytest.approx(card["metrics"]["val"]["threshold"])
    assert card["backend"] == "onnxruntime" and card["gradcam_layer"] == "features.3"
    assert card["dataset"] == "ChestMNIST" and card["preprocessing"] == "resize to 28 x 28 px"
    assert card["threads"] == os.cpu_count()  # not the training's thread count: the caller's, default one per core
    page = client.get("/").text
    assert DISCLAIMER in page and "PHANTOM" in page and 'id="file"' in page
    assert "trained on ChestMNIST: pneumothorax vs cardiomegaly" in page
    assert "/predict" in client.get("/openapi.json").json()["paths"] and client.get("/docs").status_code == 200


def test_predict_answers_each_image_with_class_probability_and_provenance(client, xrays, exported_run):
    from cxrlab.evaluation.inference import load_trained

    response = client.post("/predict", files=[("files", ("a.png", xrays[0], "image/png")), ("files", ("b.png", xrays[1], "image/png"))])
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["filename"] for r in results] == ["a.png", "b.png"]
    trained = load_trained(exported_run, "cpu")
    for r in results:
        assert r["class"] in trained.classes and 0 <= r["probability"] <= 1 and r["probability_of"] == trained.cfg.positive
        assert r["class"] == (trained.cfg.positive if r["probability"] >= r["threshold"] else trained.classes[0])
        assert r["trained_on_phantom"] is True and r["model"] == "efficientnet_b0" and r["model_version"]
        assert "not a diagnosis" in r["disclaimer"] and "PHANTOM" in r["disclaimer"]


def test_explain_returns_an_overlay_png(client, xrays):
    response = client.post("/explain", files={"file": ("a.png", xrays[0], "image/png")})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    assert image.size == (224, 224) and np.asarray(image).std() > 5


def test_dicom_monochrome1_is_inverted_and_12_bit_is_windowed():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 4096, (64, 64))
    plain = decode_dicom(dicom(pixels), "a.dcm")
    inverted = decode_dicom(dicom(4095 - pixels, "MONOCHROME1"), "b.dcm")
    assert plain.dtype == np.uint8 and plain.min() == 0 and plain.max() == 255
    assert np.abs(plain.astype(int) - inverted.astype(int)).max() <= 1  # white = low values, shown the same way
    windowed = decode_dicom(dicom(pixels, window=(1000, 400)), "c.dcm")
    assert (windowed[pixels <= 800] == 0).all() and (windowed[pixels >= 1200] == 255).all()  # outside the window: clipped


def test_dicom_upload_is_predicted_like_the_same_image_as_png(client, exported_run):
    from cxrlab.core.runs import RunDir

    cfg = RunDir(exported_run).load_config()
    image = load_task(cfg.data_root, 28, cfg.classes, splits=("val",)).splits["val"].images[3].numpy().astype(float)
    image = np.round((image - image.min()) / (image.max() - image.min()) * 255).astype(np.uint8)  # full range, as DICOM scaling gives
    as_dicom = dicom(image.astype(np.uint16) * 16)  # 8-bit values in a 12-bit range
    from_dicom = client.post("/predict", files={"files": ("x.dcm", as_dicom, "application/dicom")}).json()["results"][0]
    from_png = client.post("/predict", files={"files": ("x.png", png(Image.fromarray(image)), "image/png")}).json()["results"][0]
    assert from_dicom["probability"] == pytest.approx(from_png["probability"], abs=1e-3)


def test_bad_uploads_get_named_errors_and_the_server_keeps_answering(exported_run, xrays):
    client = TestClient(create_app(exported_run, max_upload_mb=0.05))
    big = png(Image.fromarray(np.random.default_rng(0).integers(0, 255, (400, 400), dtype=np.uint8)))
    assert len(big) > 0.05 * 2**20
    too_big = client.post("/predict", files={"files": ("big.png", big, "image/png")})
    assert too_big.status_code == 413 and "limit" in too_big.json()["detail"]
    text = client.post("/predict", files={"files": ("notes.txt", b"hello, not an image", "text/plain")})
    assert text.status_code == 415 and "notes.txt" in text.json()["detail"] and "not an image" in text.json()["detail"]
    truncated = client.post("/predict", files={"files": ("cut.png", xrays[0][:60], "image/png")})
    assert truncated.status_code == 422 and "cut.png" in truncated.json()["detail"]
    broken = dicom(np.zeros((32, 32)))[:-500]  # pixel data cut short
    bad_dicom = client.post("/explain", files={"file": ("broken.dcm", broken, "application/dicom")})
    assert bad_dicom.status_code == 422 and "DICOM" in bad_dicom.json()["detail"]
    empty = client.post("/predict", files={"files": ("empty.png", b"", "image/png")})
    assert empty.status_code == 422
    assert client.post("/predict").status_code == 422  # no file at all
    assert client.get("/health").status_code == 200
    assert client.post("/predict", files={"files": ("ok.png", xrays[2], "image/png")}).status_code == 200


def test_decode_names_a_broken_dicom():
    with pytest.raises(DamagedImage, match="holds no image"):
        decode_dicom(b"\0" * 128 + b"DICM" + b"\x02\x00" * 10, "x.dcm")


def test_concurrent_requests_do_not_mix_results_and_explanations_never_starve_predictions(client, xrays):
    def ask(i):
        route = "/explain" if i % 4 == 0 else "/predict"
        if route == "/explain":
            answer = client.post(route, files={"file": (f"{i}.png", xrays[i % 20], "image/png")})
            return i, (answer.status_code, answer.headers.get("retry-after"))
        return i, client.post(route, files={"files": (f"{i}.png", xrays[i % 20], "image/png")}).json()["results"][0]

    alone = {
        i: client.post("/predict", files={"files": (f"{i}.png", xrays[i], "image/png")}).json()["results"][0]["probability"]
        for i in range(20)
    }
    explained = []
    with ThreadPoolExecutor(16) as pool:
        for i, result in pool.map(ask, range(80)):
            if i % 4 == 0:
                assert result in ((200, None), (503, "5")), result  # one Grad-CAM at a time; the others are told when to retry
                explained.append(result[0])
            else:
                assert result["filename"] == f"{i}.png" and result["probability"] == pytest.approx(alone[i % 20], abs=1e-6)
    assert 200 in explained


def test_the_access_token_reaches_no_log(exported_run):
    """The page's ?token= link, a Bearer request and a wrong token: the server's whole console output holds none of them."""
    import os
    import urllib.request

    from tests.conftest import start_server

    token, wrong = "s3cret-token-abcdefghijkl", "wrong-token-zyxwvutsrqpo"
    process, url = start_server(exported_run, env={**os.environ, "CXRLAB_TOKEN": token})
    try:
        assert urllib.request.urlopen(f"{url}/?token={token}", timeout=30).status == 200
        request = urllib.request.Request(f"{url}/model", headers={"Authorization": f"Bearer {token}"})
        assert urllib.request.urlopen(request, timeout=30).status == 200
        assert "trained on" not in urllib.request.urlopen(f"{url}/?token={wrong}&x=1", timeout=30).read().decode()  # locked page
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0]
    assert '"GET /?token=[hidden] HTTP/1.1" 200' in output and "token=[hidden]&x=1" in output  # the requests were logged, masked
    assert token not in output and wrong not in output
