"""A one-node Garage (S3-compatible object store) on loopback for the benchmarks, with buckets
and one key allowed on all of them; stopped with the other processes."""

import re
import secrets
import shutil
import subprocess
import time
from pathlib import Path


def binary():
    found = shutil.which("garage") or str(Path.home() / ".cargo/bin/garage")
    if not Path(found).exists():
        raise SystemExit("garage is not installed (cargo install --locked garage)")
    return found


class Garage:
    """Garage on `s3_port`, holding `buckets`; `key_id` and `secret` may use them all."""

    def __init__(self, procs, work, s3_port, rpc_port, buckets):
        self.bin = binary()
        self.config = work / "garage.toml"
        self.endpoint = f"http://127.0.0.1:{s3_port}"
        self.config.write_text(f"""metadata_dir = "{work / 'garage-meta'}"
data_dir = "{work / 'garage-data'}"
db_engine = "lmdb"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc_port}"
rpc_public_addr = "127.0.0.1:{rpc_port}"
rpc_secret = "{secrets.token_hex(32)}"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:{s3_port}"
root_domain = ".s3.garage.localhost"
""")
        self.proc = procs.start("garage", [self.bin, "-c", str(self.config), "server"])
        deadline = time.monotonic() + 30
        while self.cli("status", check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise SystemExit("garage did not start")
            time.sleep(0.2)
        node = self.cli("node", "id", "-q").stdout.strip().split("@")[0]
        self.cli("layout", "assign", "-z", "dc1", "-c", "10G", node)
        self.cli("layout", "apply", "--version", "1")
        key = self.cli("key", "create", "bench-key").stdout
        self.key_id = re.search(r"Key ID:\s*(\S+)", key).group(1)
        self.secret = re.search(r"Secret key:\s*(\S+)", key).group(1)
        for bucket in buckets:
            self.cli("bucket", "create", bucket)
            self.cli("bucket", "allow", "--read", "--write", "--owner", bucket,
                     "--key", "bench-key")

    def cli(self, *args, check=True):
        return subprocess.run([self.bin, "-c", str(self.config), *args], capture_output=True,
                              text=True, check=check)

    def key_files(self, work):
        """The key as wharf reads it: (access key file, secret key file)."""
        access, secret = work / "s3-access-key", work / "s3-secret"
        access.write_text(self.key_id + "\n")
        secret.write_text(self.secret + "\n")
        secret.chmod(0o600)
        return access, secret
