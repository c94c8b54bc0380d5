"""cxrlab: chest X-ray classification on ChestMNIST (MedMNIST)."""

__version__ = "0.1.0"
