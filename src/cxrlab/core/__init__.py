"""What every layer above config shares about a run: its directory (runs.py), checkpoints and weights
(checkpoint.py), and the device (device.py)."""
