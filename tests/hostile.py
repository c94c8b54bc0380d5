"""Hostile uploads, generated: a deflate bomb, a compressed frame larger than its header, malformed LUTs, a zero
rescale slope, and a body of many files. Built with pydicom and zlib; nothing is downloaded."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, JPEGBaseline8Bit, SecondaryCaptureImageStorage, generate_uid


def _meta(transfer_syntax) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    return meta


def _image_module(ds: Dataset, rows: int, columns: int, bits: int = 16) -> None:
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = SecondaryCaptureImageStorage, generate_uid(), "DX"
    ds.PatientName, ds.PatientID = "Doe^Jane", "PID-0042"  # must never be echoed, logged or stored
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, columns, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, min(bits, 12), min(bits, 12) - 1, 0


def dicom_bytes(pixels: np.ndarray, **elements) -> bytes:
    """A valid 16-bit DICOM of ``pixels`` with extra elements (e.g. RescaleSlope=0) set on the dataset."""
    ds = FileDataset("x.dcm", {}, file_meta=_meta(ExplicitVRLittleEndian), preamble=b"\0" * 128)
    _image_module(ds, *pixels.shape)
    for key, value in elements.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def deflate_bomb(inflated_bytes: int = 1 << 30, rows: int = 256, columns: int = 256) -> bytes:
    """Deflated Explicit VR Little Endian: a small header-valid image whose dataset also holds a private element of
    ``inflated_bytes`` zeros, so the upload is ~1/1000 of what it inflates to."""
    head = io.BytesIO()
    head.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(head, _meta(DeflatedExplicitVRLittleEndian), enforce_standard=True)
    ds = Dataset()
    _image_module(ds, rows, columns)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    squeeze = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    out = [head.getvalue(), squeeze.compress(body.getvalue())]
    out.append(squeeze.compress(struct.pack("<HH2sHI", 0x0009, 0x1010, b"OB", 0, inflated_bytes)))  # a private OB element
    chunk = bytes(1 << 24)
    for _ in range(inflated_bytes >> 24):
        out.append(squeeze.compress(chunk))
    out.append(squeeze.flush())
    return b"".join(out)


def oversized_jpeg_frame(header_rows: int = 64, header_columns: int = 64, frame_side: int = 9000) -> bytes:
    """JPEG Baseline pixel data whose codestream declares frame_side^2 pixels while Rows x Columns says 64 x 64."""
    frame = io.BytesIO()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(frame, format="JPEG")
    data = bytearray(frame.getvalue())
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", frame_side, frame_side)  # the frame header's height and width
    ds = FileDataset("x.dcm", {}, file_meta=_meta(JPEGBaseline8Bit), preamble=b"\0" * 128)
    _image_module(ds, header_rows, header_columns, bits=8)
    ds.PixelData = encapsulate([bytes(data)])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def malformed_voi_lut(rows: int = 32, columns: int = 32) -> bytes:
    """A VOI LUT Sequence whose descriptor declares 4,096 entries while its data holds 3."""
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.add_new(0x00283006, "OW", struct.pack("<3H", 0, 100, 200))  # LUT Data
    pixels = (np.arange(rows * columns).reshape(rows, columns) % 4096).astype(np.uint16)
    return dicom_bytes(pixels, VOILUTSequence=Sequence([item]))


def zero_rescale_slope(rows: int = 32, columns: int = 32) -> bytes:
    pixels = (np.arange(rows * columns).reshape(rows, columns) % 4096).astype(np.uint16)
    return dicom_bytes(pixels, RescaleSlope=0, RescaleIntercept=-1024)


def short_pixel_data(rows: int = 64, columns: int = 64) -> bytes:
    """Rows x Columns says 64 x 64 at 16 bits, the Pixel Data element holds a tenth of it."""
    ds = FileDataset("x.dcm", {}, file_meta=_meta(ExplicitVRLittleEndian), preamble=b"\0" * 128)
    _image_module(ds, rows, columns)
    ds.PixelData = bytes(rows * columns * 2 // 10)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def unknown_photometric(rows: int = 32, columns: int = 32) -> bytes:
    pixels = (np.arange(rows * columns).reshape(rows, columns) % 4096).astype(np.uint16)
    return dicom_bytes(pixels, PhotometricInterpretation="HSV")
