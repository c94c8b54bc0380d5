"""Image files from outside the data set (PNG, JPEG, TIFF, DICOM, ...) turned into what the model expects.

Files are untrusted. An image's declared size is read from its header and checked against ``max_pixels``
(default 50 MP, far above any radiograph: a 43 x 43 cm detector at 0.1 mm is 18.5 MP) before any pixel
is decoded, so a decompression bomb (a small PNG declaring 15,000 x 15,000 pixels) costs neither memory nor time.

A full-size image is made square the way MedMNIST made the data set (``preprocess`` of its entry in
data/datasets.py): ChestMNIST's NIH images are square and were resized, so cxrlab resizes; PneumoniaMNIST's
source images are not square and were center-cropped to their short side first, so cxrlab crops the same way
instead of squashing the image.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cxrlab.errors import BlankImage, DamagedImage, ImageFileError, ImageTooLarge, UnsupportedImage
from cxrlab.limits import DEFAULT_MAX_PIXELS

PILLOW_FORMATS = ("PNG", "JPEG", "TIFF", "BMP")  # the only Pillow decoders reachable from an upload
PREPROCESSING = ("resize", "center-crop")


def to_gray_uint8(image: Image.Image) -> np.ndarray:
    """Any PIL mode -> uint8 grayscale array. High-bit-depth images are min-max scaled, not clipped."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float32)
        low, high = values.min(), values.max()
        scaled = (values - low) / (high - low) * 255 if high > low else np.zeros_like(values)
        return (scaled + 0.5).astype(np.uint8)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))  # X-ray background is black
        image = Image.alpha_composite(background, image)
    return np.asarray(image.convert("L"), dtype=np.uint8)


def center_crop(gray: np.ndarray) -> np.ndarray:
    """The largest centered square (side = the short side), as MedMNIST cropped PneumoniaMNIST's sources."""
    h, w = gray.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return gray[top : top + side, left : left + side]


def to_model_size(gray: np.ndarray, size: int, preprocess: str = "resize") -> np.ndarray:
    """Make the image square as the data set was made (``preprocess``), then resize it to size x size (bicubic)."""
    if preprocess not in PREPROCESSING:
        raise ValueError(f"unknown preprocessing {preprocess!r}")
    if preprocess == "center-crop":
        gray = center_crop(gray)
    if gray.shape == (size, size):
        return gray
    return np.asarray(Image.fromarray(gray).resize((size, size), Image.Resampling.BICUBIC), dtype=np.uint8)


def check_pixels(name: str, width: int, height: int, frames: int, max_pixels: int) -> None:
    total = width * height * frames
    if total > max_pixels:
        shape = f"{width} x {height} px" + (f" x {frames} frames" if frames > 1 else "")
        raise ImageTooLarge(
            f"{name}: the image is {shape} ({total / 1e6:,.1f} megapixels), over the limit of "
            f"{max_pixels / 1e6:g} megapixels; no chest radiograph is that large"
        )


def load_image(path: str | Path, size: int, preprocess: str = "resize", max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageFileError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ImageFileError(f"{path}: is a folder, not an image file") from None
    except OSError as exc:
        raise ImageFileError(f"{path}: cannot read ({exc.strerror})") from None
    return decode_image(data, str(path), size, preprocess, max_pixels)


def is_dicom(data: bytes, name: str = "") -> bool:
    return data[128:132] == b"DICM" or name.lower().endswith((".dcm", ".dicom"))


def decode_image(data: bytes, name: str, size: int, preprocess: str = "resize", max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Bytes of a PNG, JPEG, TIFF, BMP or DICOM file -> uint8 (size, size) grayscale, prepared as the data set was.
    UnsupportedImage when the bytes are no image format read here, DamagedImage when a known format fails,
    ImageTooLarge when the image declares more than ``max_pixels`` pixels (checked before decoding), BlankImage when
    it decodes to a single value."""
    return prepare(decode_full(data, name, max_pixels, size), size, preprocess)


def decode_full(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS, size: int = 0) -> np.ndarray:
    """Bytes -> the uint8 grayscale image at its own size (JPEG may decode at a reduced scale still >= ``size``)."""
    gray = decode_dicom(data, name, max_pixels) if is_dicom(data, name) else _decode_pillow(data, name, max_pixels, size)
    if gray.ndim != 2 or min(gray.shape) < 1:
        raise DamagedImage(f"{name}: unexpected image shape {gray.shape}")
    if gray.min() == gray.max():
        raise BlankImage(f"{name}: the image is a single value ({int(gray.min())} everywhere): nothing to classify")
    return gray


def prepare(gray: np.ndarray, size: int, preprocess: str = "resize") -> np.ndarray:
    return np.array(to_model_size(gray, size, preprocess))  # a writable copy: torch.from_numpy warns on read-only arrays


def _decode_pillow(data: bytes, name: str, max_pixels: int, size: int) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides, below
            with Image.open(io.BytesIO(data), formats=PILLOW_FORMATS) as image:  # reads the header only
                check_pixels(name, image.width, image.height, 1, max_pixels)  # only the first frame is decoded
                if image.format == "JPEG" and size:
                    image.draft("L", (size, size))  # JPEG decodes at 1/2, 1/4 or 1/8 scale when that is still >= size
                image.load()
                return to_gray_uint8(image)
    except Image.DecompressionBombError as exc:  # Pillow's own guard (2 x Image.MAX_IMAGE_PIXELS) fires in open(), before ours
        raise ImageTooLarge(f"{name}: {exc} (cxrlab's limit: {max_pixels / 1e6:g} megapixels)") from None
    except UnidentifiedImageError:
        raise UnsupportedImage(f"{name}: not an image file (PNG, JPEG, BMP, TIFF or DICOM)") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise DamagedImage(f"{name}: damaged or truncated image ({exc})") from None


# What a DICOM may declare: anything else is refused before decoding (422).
PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "PALETTE COLOR")
INFLATE_OVERHEAD = 16 * 2**20  # a deflated dataset may inflate to its pixels' bytes plus this much for its other elements
INFLATE_STEP = 8 * 2**20


def inflated_cap(max_pixels: int) -> int:
    """Bytes a deflated DICOM dataset may inflate to: the pixel limit at 4 bytes a pixel, plus room for the rest."""
    return 4 * max_pixels + INFLATE_OVERHEAD


def _inflate_bounded(data: bytes, name: str, max_pixels: int) -> bytes:
    """A Deflated Explicit VR Little Endian file rewritten as Explicit VR Little Endian, inflating at most
    ``inflated_cap`` bytes: pydicom would inflate the whole dataset at once (a 3 MB upload can hold 3 GB).
    Other transfer syntaxes are returned unchanged."""
    import zlib

    from pydicom.filereader import _read_file_meta_info, read_preamble
    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

    stream = io.BytesIO(data)
    read_preamble(stream, force=True)
    meta = _read_file_meta_info(stream)
    if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        return data
    cap = inflated_cap(max_pixels)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    pending, parts, total = stream.read(), [], 0
    try:
        while pending and total <= cap:  # in steps, so that a bomb costs about the cap, not twice it
            part = inflater.decompress(pending, INFLATE_STEP)
            pending = inflater.unconsumed_tail
            parts.append(part)
            total += len(part)
    except zlib.error as exc:
        raise DamagedImage(f"{name}: the deflated DICOM dataset is damaged ({exc})") from None
    if total > cap:
        raise ImageTooLarge(
            f"{name}: the deflated DICOM dataset inflates to more than {cap / 2**20:,.0f} MB, more than an image "
            f"within the limit of {max_pixels / 1e6:g} megapixels needs; refused before inflating the rest"
        )
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    head = io.BytesIO()
    write_file_meta_info(head, meta, enforce_standard=False)
    return b"".join([b"\0" * 128, b"DICM", head.getvalue(), *parts])


def _codestream_size(frame: bytes) -> tuple[int, int] | None:
    """(width, height) declared by a JPEG (SOF), JPEG-LS (SOF55) or JPEG 2000 (SIZ) codestream; None when the
    frame is none of these (RLE, whose decoded size is Rows x Columns by construction)."""
    import struct

    if frame[:4] == b"\xff\x4f\xff\x51" and len(frame) >= 24:  # JPEG 2000: SOC then SIZ: Lsiz, Rsiz, Xsiz, Ysiz, XOsiz, YOsiz
        xsiz, ysiz, xo, yo = struct.unpack(">IIII", frame[8:24])
        return xsiz - xo, ysiz - yo
    if frame[:12].find(b"jP  ") >= 0:  # a JP2 file wrapped around the codestream
        start = frame.find(b"\xff\x4f\xff\x51")
        return _codestream_size(frame[start:]) if start >= 0 else (0, 0)
    if frame[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 4 <= len(frame):  # walk the JPEG markers to the frame header
        if frame[i] != 0xFF:
            i += 1
            continue
        marker = frame[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            i += 1 if marker == 0xFF else 2
            continue
        length = struct.unpack(">H", frame[i + 2 : i + 4])[0]
        if (0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC)) or marker == 0xF7:
            if i + 9 > len(frame):
                break
            height, width = struct.unpack(">HH", frame[i + 5 : i + 9])
            return width, height
        i += 2 + length
    return 0, 0  # a JPEG without a frame header cannot be decoded


def decode_dicom(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """DICOM -> uint8: modality LUT (rescale), then the file's VOI window (Window Center/Width or VOI LUT) when it
    has one, else its full range, scaled to 0-255; MONOCHROME1 (white = low values) inverted; first frame only.

    Every transfer syntax is decoded under the same limits: Rows x Columns x frames from the header, and for
    compressed (encapsulated) frames the size their codestream declares, must be within ``max_pixels``, checked
    before any pixel is decoded; a deflated dataset is inflated with a cap. Malformed files (LUTs, rescale,
    photometric interpretation, pixel data length) are DamagedImage, each naming the problem."""
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut, pixel_array

    try:
        data = _inflate_bounded(data, name, max_pixels)
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except ImageFileError:
        raise
    except Exception as exc:  # pydicom raises many types for broken files
        raise DamagedImage(f"{name}: cannot read the DICOM file ({type(exc).__name__}: {exc})") from None
    check_pixels(name, columns, rows, frames, max_pixels)  # the header's declared size, before any pixel is decoded
    if "PixelData" not in ds:
        raise DamagedImage(f"{name}: the DICOM file holds no image (no Pixel Data element)")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    if photometric not in PHOTOMETRIC:
        raise DamagedImage(f"{name}: unknown Photometric Interpretation {photometric!r}; expected one of {', '.join(PHOTOMETRIC)}")
    _check_encapsulated(ds, name, rows, columns, frames, max_pixels)
    step = "decode the DICOM image"
    try:
        pixels = pixel_array(ds, index=0) if frames > 1 else ds.pixel_array  # only the first frame is decoded
        if ds.get("SamplesPerPixel", 1) != 1 or pixels.ndim == 3:
            return np.asarray(Image.fromarray(np.asarray(pixels, dtype=np.uint8)).convert("L"), dtype=np.uint8)
        step = "apply the modality LUT (Rescale Slope / Intercept or Modality LUT Sequence)"
        values = apply_modality_lut(pixels, ds)
        step = "apply the VOI LUT (Window Center / Width or VOI LUT Sequence)"
        if "WindowCenter" in ds or "VOILUTSequence" in ds:
            values = apply_voi_lut(values, ds)
        values = np.asarray(values, dtype=np.float32)
    except ImageFileError:
        raise
    except Exception as exc:  # broken pixel data, LUT descriptors that do not fit their data, codecs
        raise DamagedImage(f"{name}: cannot {step} ({type(exc).__name__}: {exc})") from None
    if not np.isfinite(values).all():
        raise DamagedImage(f"{name}: the DICOM rescale gives values that are not finite numbers")
    low, high = float(values.min()), float(values.max())
    if not high > low:
        raise BlankImage(
            f"{name}: the DICOM image decodes to a single value ({low:g}) after its rescale and window: "
            "nothing to classify (a Rescale Slope of 0, or an empty image)"
        )
    scaled = (values - low) * (255 / (high - low))
    if photometric == "MONOCHROME1":
        scaled = 255 - scaled
    return (scaled + 0.5).astype(np.uint8)


def _check_encapsulated(ds, name: str, rows: int, columns: int, frames: int, max_pixels: int) -> None:
    """For compressed pixel data: the first frame's codestream must declare the header's size (and so be within
    the pixel limit) before a codec allocates what the codestream asks for."""
    from pydicom.encaps import generate_frames

    if not ds.file_meta.get("TransferSyntaxUID") or not ds.file_meta.TransferSyntaxUID.is_compressed:
        return
    try:
        frame = next(generate_frames(ds.PixelData, number_of_frames=frames))
    except Exception as exc:
        raise DamagedImage(f"{name}: the compressed DICOM pixel data is damaged ({type(exc).__name__}: {exc})") from None
    declared = _codestream_size(bytes(frame[:65536]))
    if declared is None:
        return
    width, height = declared
    check_pixels(name, width, height, frames, max_pixels)
    if (width, height) != (columns, rows):
        raise DamagedImage(f"{name}: the compressed frame is {width} x {height} px but the header says {columns} x {rows}")
