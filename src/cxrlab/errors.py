"""User-facing errors: the CLI prints their message and exits non-zero, without a traceback."""


class CxrlabError(Exception):
    """Base class for errors caused by input, data or environment rather than by a bug."""

    def _render_traceback_(self) -> list[str]:
        # IPython (Jupyter, Colab) shows this instead of a traceback: the message is the whole story, as in the CLI.
        return [f"{type(self).__name__}: {self}"]


class ConfigError(CxrlabError):
    """An option or config file value is invalid."""


class DataNotFoundError(CxrlabError):
    """The dataset file is missing and could not be downloaded."""


class DataFileError(CxrlabError):
    """The dataset file exists but is corrupt, truncated or has the wrong layout."""


class RunDirError(CxrlabError):
    """A run directory is missing, incomplete or inconsistent."""


class TrainingDiverged(CxrlabError):
    """The loss became NaN or infinite."""


class WeightsError(CxrlabError):
    """Pretrained weights could not be obtained or do not fit the model."""


class ImageFileError(CxrlabError):
    """An image file given for prediction cannot be read."""


class UnsupportedImage(ImageFileError):
    """The bytes are not an image format cxrlab reads (the service answers 415)."""


class DamagedImage(ImageFileError):
    """A known format that cannot be decoded: truncated file, broken DICOM pixel data (the service answers 422)."""


class ExportError(CxrlabError):
    """A model could not be exported, or the export does not match PyTorch."""


class ImageTooLarge(ImageFileError):
    """An image declares more pixels than the limit (a decompression bomb, or no radiograph): refused before decoding
    (the service answers 413)."""


class BlankImage(ImageFileError):
    """The image decodes to a single value (all black, all white, a rescale slope of 0): nothing to classify."""
