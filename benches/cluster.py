#!/usr/bin/env python3
"""A rollout through four mirror nodes: what the upstream sends, and how long it takes.

A CNCF distribution registry is the upstream, seeded offline with one image (4 layers, 120 MiB),
reached through one link of --rate MiB/s that every connection shares (a datacenter's uplink).
Setups of four nodes, each with empty caches, take the same rollout: --clients clients, spread
evenly over the nodes, start together and each GET the manifest by tag and every layer, one
after another:
  - wharf, the four nodes one cluster ([cluster]: each digest fetched through its owner);
  - the same on a shared bucket ([cache.shared] on a one-node Garage), then a second such
    cluster with empty disks on the same bucket (a datacenter's wharfs replaced);
  - wharf, four independent nodes (what several wharfs behind a load balancer did before);
  - CNCF distribution in proxy mode, four nodes on one S3 bucket (its s3 driver on the same
    Garage), and four on their own disks.
Rows: the rollout's wall time, the bytes that crossed the upstream link over the image's size,
the bytes that went between wharf nodes over the image's size, the nodes' CPU seconds (and the
object store's), and the same rollout again once everything is cached (what the clients alone
take).

    python3 benches/cluster.py --wharf target/release/wharf [--clients 32] [--rate 128]
"""

import argparse
import json
import os
import secrets
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare as c  # noqa: E402  (the shared harness: processes, HTTP client, seeding)
from garage import Garage  # noqa: E402

NODES = 4
LAYERS = "64M,32M,16M,8M"


class SharedLink(c.Throttle):
    """compare.py's throttle, but one link for every connection: the bytes of all of them go
    down it one after another at `rate`, as through a datacenter's WAN uplink."""

    def __init__(self, port, upstream_port, rate):
        self.free_at = 0.0
        super().__init__(port, upstream_port, rate)

    async def _pipe(self, reader, writer, downstream):
        try:
            while data := await reader.read(64 * c.KIB):
                writer.write(data)
                await writer.drain()
                if downstream:
                    self.sent += len(data)
                    now = time.monotonic()
                    self.free_at = max(now, self.free_at) + len(data) / self.rate
                    if self.free_at > now:
                        await c.asyncio.sleep(self.free_at - now)
        finally:
            writer.close()


def start_cluster(procs, work, binary, ports, upstream_url, label="cluster", shared=None):
    """Four wharf nodes of one cluster, with empty caches; `shared`: a Garage whose bucket
    `wharf` they share."""
    token = work / "peer-token"
    token.write_text(secrets.token_hex(16) + "\n")
    token.chmod(0o600)
    names = [f"n{i}" for i in range(len(ports))]
    peers = "".join(f'[[cluster.peer]]\nname = "{n}"\nurl = "http://127.0.0.1:{p}"\n'
                    for n, p in zip(names, ports))
    bucket = ""
    if shared:
        access, secret = shared.key_files(work)
        bucket = f"""[cache.shared]
endpoint = "{shared.endpoint}"
bucket = "wharf"
region = "garage"
access_key_file = "{access}"
secret_key_file = "{secret}"
"""
    nodes = []
    for name, port in zip(names, ports):
        config = work / f"{label}-{name}.toml"
        config.write_text(f"""[server]
listen = "127.0.0.1:{port}"
[cache]
dir = "{work / (label + '-' + name + '-cache')}"
{bucket}[[upstream]]
name = "docker.io"
url = "{upstream_url}"
[cluster]
node = "{name}"
peer_token_file = "{token}"
{peers}""")
        proc = procs.start(f"{label}-{name}", [str(binary), "serve", "--config", str(config)])
        nodes.append(c.Mirror(f"{label}-{name}", port, proc))
    return nodes


def start_distribution_s3(procs, work, name, port, upstream_url, garage):
    """distribution's proxy storing in Garage's bucket `distribution` (its s3 driver, path-style
    requests to the endpoint), serving blobs itself rather than redirecting to the store."""
    config = work / f"{name}.yml"
    config.write_text(f"""version: 0.1
log: {{level: warn, formatter: text}}
storage:
  s3:
    accesskey: {garage.key_id}
    secretkey: {garage.secret}
    region: garage
    regionendpoint: {garage.endpoint}
    bucket: distribution
    secure: false
    v4auth: true
  cache: {{blobdescriptor: inmemory}}
  redirect: {{disable: true}}
http: {{addr: 127.0.0.1:{port}}}
proxy: {{remoteurl: "{upstream_url}"}}
""")
    # Its AWS SDK refuses to start with AWS_CA_BUNDLE set (it cannot add a bundle to the
    # registry's own transport), and the store is plain HTTP on loopback anyway.
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    return c.Mirror(name, port, procs.start(name, ["docker-registry", "serve", str(config)],
                                            env=env))


def peer_bytes(nodes):
    """Bytes the wharf `nodes` received from each other."""
    total = 0.0
    for node in nodes:
        r = c.http_get(node.port, "/metrics", keep_body=True)
        for line in r.body.decode().splitlines():
            if line.startswith("wharf_peer_bytes_total"):
                total += float(line.rsplit(" ", 1)[1])
    return total


def rollout(nodes, image, clients):
    """`clients` clients over `nodes`, started together; the wall time and the failures."""
    paths = [f"/v2/{image['repo']}/manifests/{c.TAG}"] + \
        [c.blob_path(image, d) for d, _ in image["layers"]]
    barrier = threading.Barrier(clients)
    failures = []

    def pull(i):
        port = nodes[i % len(nodes)].port
        barrier.wait()
        for path in paths:
            headers = [("Accept", c.ACCEPT)] if "/manifests/" in path else []
            r = c.http_get(port, path, headers=headers)
            if r.status != 200:
                failures.append((port, path, r.status))

    threads = [threading.Thread(target=pull, args=(i,)) for i in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.monotonic() - started, failures


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wharf", required=True, type=Path)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--rate", type=float, default=128,
                        help="MiB/s of the upstream link, shared by every connection")
    parser.add_argument("--results", type=Path, default=Path("benches/cluster.jsonl"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="wharf-cluster-bench-"))
    (work / "logs").mkdir()
    procs = c.Processes(work / "logs")
    results = []
    try:
        up_port, link_port, s3_port, rpc_port, *ports = c.free_ports(4 + 6 * NODES)
        upstream = c.Upstream(procs, work, up_port)
        image = c.seed(work, upstream, "library/rollout", LAYERS)
        size = sum(s for _, s in image["layers"])
        wan = SharedLink(link_port, up_port, args.rate * c.MIB)
        link = f"http://127.0.0.1:{link_port}"
        garage = Garage(procs, work, s3_port, rpc_port, ["wharf", "distribution"])
        setups = {
            "wharf cluster": lambda p: start_cluster(procs, work, args.wharf, p, link),
            "wharf cluster, bucket": lambda p: start_cluster(
                procs, work, args.wharf, p, link, "shared", garage),
            "  again, empty disks": lambda p: start_cluster(
                procs, work, args.wharf, p, link, "again", garage),
            "wharf independent": lambda p: [
                c.start_wharf(procs, work, args.wharf, f"solo{i}", port, link)
                for i, port in enumerate(p)],
            "distribution, bucket": lambda p: [
                start_distribution_s3(procs, work, f"dists3{i}", port, link, garage)
                for i, port in enumerate(p)],
            "distribution": lambda p: [
                c.start_distribution(procs, work, f"dist{i}", port, link)
                for i, port in enumerate(p)],
        }
        for i, (setup, start) in enumerate(setups.items()):
            nodes = start(ports[i * NODES:(i + 1) * NODES])
            for node in nodes:
                if not c.wait_http(node.port, "/v2/"):
                    sys.exit(f"{node.name} did not start")
            before = wan.sent
            pids = [node.proc.pid for node in nodes]
            cpu, store_cpu = c.cpu_seconds(pids), c.cpu_seconds([garage.proc.pid])
            wall, failures = rollout(nodes, image, args.clients)
            cpu, store_cpu = c.cpu_seconds(pids) - cpu, c.cpu_seconds([garage.proc.pid]) - store_cpu
            # What crossed the link (a connection cut short leaves bytes in flight that the
            # registry's log counts but that never arrive).
            sent = wan.sent - before
            peers = peer_bytes(nodes) if setup.startswith(("wharf", " ")) else 0
            # The same rollout again, all cached: what the clients themselves take.
            warm, warm_failures = rollout(nodes, image, args.clients)
            row = dict(setup=setup.strip(), nodes=NODES, clients=args.clients,
                       rate_mib_s=args.rate, wall_s=round(wall, 2),
                       upstream_copies=round(sent / size, 2),
                       peer_copies=round(peers / size, 2), cpu_s=round(cpu, 2),
                       store_cpu_s=round(store_cpu, 2), warm_s=round(warm, 2),
                       failures=len(failures) + len(warm_failures))
            results.append(row)
            c.log(json.dumps(row))
            for node in nodes:
                procs.stop(node.proc)
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    with open(args.results, "w") as f:
        for row in results:
            f.write(json.dumps(row) + "\n")
    base = next(r for r in results if r["setup"] == "wharf cluster")
    print(f"{'setup':<22} {'cold s':>7} {'× cluster':>9} {'upstream':>9} {'peers':>6} "
          f"{'cpu s':>6} {'store cpu':>9} {'warm s':>7} {'failures':>8}")
    for r in results:
        print(f"{r['setup']:<22} {r['wall_s']:>7} {r['wall_s'] / base['wall_s']:>9.2f} "
              f"{r['upstream_copies']:>9} {r['peer_copies']:>6} {r['cpu_s']:>6} "
              f"{r['store_cpu_s']:>9} {r['warm_s']:>7} {r['failures']:>8}")


if __name__ == "__main__":
    main()
