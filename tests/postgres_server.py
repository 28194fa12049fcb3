"""A throwaway PostgreSQL server for tests: the Debian package's ``initdb`` and ``pg_ctl`` (found
on PATH or under /usr/lib/postgresql/*/bin), a cluster in a temporary folder, listening on
127.0.0.1 only (and a Unix socket in that folder), stopped and removed afterwards.

When the binaries are absent the caller skips, unless ``AREACAL_REQUIRE_POSTGRES=1`` (set by
``.ci/run``, which installs the package) turns that into a failure. As root, the server runs as
the package's ``postgres`` user (initdb refuses root)."""
from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class PostgresServer:
    host: str
    port: int
    user: str
    password: str
    db_name: str

    def env(self) -> dict[str, str]:
        """The DAGSTER_PG_* variables that deploy/postgres/dagster.yaml reads."""
        return {"DAGSTER_PG_HOST": self.host, "DAGSTER_PG_PORT": str(self.port),
                "DAGSTER_PG_USERNAME": self.user, "DAGSTER_PG_PASSWORD": self.password,
                "DAGSTER_PG_DB": self.db_name}


def postgres_bin_dir() -> Path | None:
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(os.path.realpath(found)).parent
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True):
        return Path(candidate).parent
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def postgres_server(bin_dir: Path, db_name: str = "dagster"):
    as_root = os.geteuid() == 0
    tmp = Path(tempfile.mkdtemp(prefix="areacal-pg-"))
    prefix: list[str] = []
    if as_root:
        import pwd

        pw = pwd.getpwnam("postgres")
        os.chown(tmp, pw.pw_uid, pw.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    data, log = tmp / "data", tmp / "server.log"
    password = "areacal-test"
    pwfile = tmp / "pw"
    pwfile.write_text(password + "\n")
    if as_root:
        os.chown(pwfile, pw.pw_uid, pw.pw_gid)
    port = _free_port()

    def run(*args, **kw):
        return subprocess.run(prefix + [str(a) for a in args], check=True, capture_output=True,
                              text=True, timeout=120, **kw)

    started = False
    try:
        run(bin_dir / "initdb", "-D", data, "-U", "areacal", f"--pwfile={pwfile}",
            "--auth=scram-sha-256", "-E", "UTF8", "--no-sync")
        options = (f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={tmp} "
                   "-c fsync=off -c max_connections=100")
        run(bin_dir / "pg_ctl", "-D", data, "-l", log, "-o", options, "-w", "-t", "60", "start")
        started = True
        import psycopg2

        for _ in range(50):
            try:
                conn = psycopg2.connect(host="127.0.0.1", port=port, user="areacal",
                                        password=password, dbname="postgres")
                break
            except psycopg2.OperationalError:
                time.sleep(0.2)
        else:
            raise RuntimeError(f"PostgreSQL on 127.0.0.1:{port} did not accept connections")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE {db_name}")
        conn.close()
        yield PostgresServer("127.0.0.1", port, "areacal", password, db_name)
    except subprocess.CalledProcessError as exc:
        text = log.read_text() if log.exists() else ""
        raise RuntimeError(f"{exc.cmd} failed: {exc.stderr}\n{text[-2000:]}") from exc
    finally:
        if started:
            subprocess.run(prefix + [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast",
                                     "-w", "stop"], capture_output=True, timeout=120)
        shutil.rmtree(tmp, ignore_errors=True)
