"""Image files are untrusted: sizes are checked from the header before decoding, and every data set gets its
images prepared the way MedMNIST made it."""

import io
import struct
import zlib

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageFile

from cxrlab.cli import main
from cxrlab.data.images import decode_image, to_model_size
from cxrlab.errors import ImageTooLarge
from cxrlab.limits import DEFAULT_MAX_PIXELS
from cxrlab.serve.app import create_app
from tests.test_serve import dicom


def png_bomb(width: int, height: int) -> bytes:
    """A valid grayscale PNG of zeros: a few hundred KB that decode to width x height bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer, row = zlib.compressobj(9), b"\0" * (width + 1)  # filter byte + pixels
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def big_dicom(rows: int, columns: int, frames: int = 1) -> bytes:
    """A DICOM header declaring rows x columns x frames, with a few bytes of pixel data (it is never decoded)."""
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(dicom(np.zeros((8, 8)))), force=True)
    ds.Rows, ds.Columns = rows, columns
    if frames > 1:
        ds.NumberOfFrames = frames
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def bombs():
    return {
        "bomb.png": png_bomb(15_000, 15_000),  # 225 MP: over Pillow's own guard too
        "wide.png": png_bomb(9_000, 9_000),  # 81 MP: under Pillow's guard, over cxrlab's 50 MP
        "big.jpg": encoded(Image.new("L", (8_000, 8_000)), "JPEG"),
        "big.tif": encoded(Image.new("L", (8_000, 8_000)), "TIFF", compression="tiff_deflate"),
        "big.dcm": big_dicom(10_000, 10_000),
        "frames.dcm": big_dicom(3_000, 3_000, frames=10),
    }


@pytest.fixture
def never_decoded(monkeypatch):
    """Fail the test if Pillow or pydicom decodes any pixel: refusals must come from the header alone."""
    import pydicom.dataset

    def refuse(*_args, **_kwargs):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(Image.Image, "load", refuse)
    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)
    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(refuse))


def test_every_format_is_refused_by_its_declared_size_before_decoding(bombs, never_decoded):
    for name, data in bombs.items():
        assert len(data) < 2_000_000, name  # small files, large images
        with pytest.raises(ImageTooLarge, match=f"{name}: .*(megapixels|pixels)") as err:
            decode_image(data, name, 28)
        assert "50 megapixels" in str(err.value) or "limit" in str(err.value)
    with pytest.raises(ImageTooLarge, match=r"3000 x 3000 px x 10 frames \(90.0 megapixels\), over the limit of 50 megapixels"):
        decode_image(bombs["frames.dcm"], "frames.dcm", 28)


def test_the_limit_is_an_option_and_real_sizes_pass():
    radiograph = encoded(Image.linear_gradient("L").resize((3_000, 2_500)), "PNG")  # a large real detector: 7.5 MP
    assert decode_image(radiograph, "cxr.png", 28).shape == (28, 28)
    with pytest.raises(ImageTooLarge, match="over the limit of 5 megapixels"):
        decode_image(radiograph, "cxr.png", 28, max_pixels=5_000_000)
    assert DEFAULT_MAX_PIXELS == 50_000_000


def test_the_service_answers_413_and_predict_names_the_file(bombs, exported_run, tmp_path, capsys):
    client = TestClient(create_app(exported_run))
    for name in ("bomb.png", "big.dcm"):
        answer = client.post("/predict", files={"files": (name, bombs[name], "application/octet-stream")})
        assert answer.status_code == 413 and name in answer.json()["detail"], answer.text
    explained = client.post("/explain", files={"file": ("wide.png", bombs["wide.png"], "image/png")})
    assert explained.status_code == 413 and "9000 x 9000 px" in explained.json()["detail"]
    assert client.get("/health").status_code == 200
    assert client.get("/model").json()["max_image_megapixels"] == 50
    (tmp_path / "bomb.png").write_bytes(bombs["bomb.png"])
    (tmp_path / "ok.png").write_bytes(encoded(Image.linear_gradient("L").resize((300, 300)), "PNG"))
    assert main(["predict", str(exported_run), str(tmp_path / "bomb.png"), str(tmp_path / "ok.png")]) == 1
    captured = capsys.readouterr()
    assert "bomb.png" in captured.err and "Traceback" not in captured.err and "ok.png" in captured.out
    assert main(["predict", str(exported_run), str(tmp_path / "ok.png"), "--max-image-mp", "0"]) == 2


def test_center_crop_keeps_the_middle_square_where_resize_squashes():
    """PneumoniaMNIST was center-cropped: a 200 x 100 image keeps its middle 100 x 100, undistorted."""
    image = np.zeros((100, 200), np.uint8)
    image[:, 50:150] = 200  # the middle square is bright, the sides dark
    cropped = to_model_size(image, 28, "center-crop")
    squashed = to_model_size(image, 28, "resize")
    assert cropped.min() > 190  # only the bright middle remains
    assert squashed[:, 0].max() < 10 and squashed[:, 14].min() > 190  # the dark sides are squeezed in
    portrait = np.zeros((300, 100), np.uint8)
    portrait[100:200] = 255
    assert to_model_size(portrait, 28, "center-crop").min() == 255
    with pytest.raises(ValueError, match="unknown preprocessing"):
        to_model_size(image, 28, "stretch")
