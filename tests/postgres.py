"""A throwaway PostgreSQL server (Debian's) in a temporary folder on a free port, for the shared-study tests and
benchmarks/shared_overhead.py; as the postgres user when run as root (the server refuses root)."""

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path


def server_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@contextmanager
def throwaway_server():
    """Start a server; yield a function that creates a database and returns its URL (user ``cxrlab``, trusted:
    any password in the URL is accepted). The server and its folder are removed at the end."""
    bin_dir = server_bin()
    if bin_dir is None:
        raise FileNotFoundError("PostgreSQL is not installed (`make postgres` installs Debian's)")
    folder = Path(tempfile.mkdtemp(prefix="cxrlab-postgres-"))
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_postgres:
        shutil.chown(folder, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def run(*args):
        return subprocess.run([*as_postgres, *map(str, args)], check=True, capture_output=True, timeout=120)

    run(bin_dir / "initdb", "-D", folder / "data", "-A", "trust", "-U", "cxrlab", "--no-sync", "-E", "UTF8")
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    run(bin_dir / "pg_ctl", "-D", folder / "data", "-l", folder / "log", "-o", options, "-w", "start")

    def database(name: str, password: str = "unused") -> str:
        run(bin_dir / "createdb", "-h", "127.0.0.1", "-p", port, "-U", "cxrlab", name)
        return f"postgresql+psycopg2://cxrlab:{password}@127.0.0.1:{port}/{name}"

    try:
        yield database
    finally:
        run(bin_dir / "pg_ctl", "-D", folder / "data", "-m", "immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)
