"""Start and stop the scale-out stack on this machine's loopback: Redis, N gunicorn hosts, nginx over HTTPS (#17, #38).

    python -m deploy.stack start --run-dir run/stack [--instances 2] [--port 8080] [--tls-port 8443] [--model PATH]
    python -m deploy.stack status --run-dir run/stack
    python -m deploy.stack stop --run-dir run/stack

Each gunicorn instance listens on its own port and stands for one host. They share what
several hosts must share: one ``SECRET_KEY`` (report links and CSRF tokens made on one host
check out on another), the same model file (its sha256 is checked against the card at
boot), and one Redis (``RATE_LIMIT_STORAGE_URI``: the rate limit is counted once for all
hosts). Debian's nginx and redis-server run as the current user from the run folder (their
config, pid, logs and temp files all live there), not as system services. Every process
starts in a session of its own, so ``stop`` (or a test killing one "host") reaches a
gunicorn master and its workers together. The run folder's ``stack.json`` records what
``start`` started, for ``stop`` and ``status``.

Environment: ``SECRET_KEY`` (else one is generated and shared by this stack's instances),
``MODEL_PATH``, ``RATE_LIMIT`` (e.g. ``60/minute``), ``MAX_UPLOAD_MB``, ``WEB_CONCURRENCY``
(workers per instance; 1 by default here: every "host" shares this machine's cores),
``NGINX`` and ``REDIS_SERVER`` (the binaries, else found on PATH or in /usr/sbin).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from deploy import nginx
from deploy.processes import alive, find_binary, free_port, group_alive, http_status, tail

ROOT = Path(__file__).resolve().parent.parent
STOP_SIGNALS = {"nginx": signal.SIGQUIT, "gunicorn": signal.SIGTERM, "redis": signal.SIGTERM}  # each one's graceful stop
BOOT_SECONDS = float(os.environ.get("STACK_BOOT_SECONDS", "180"))


class StackError(RuntimeError):
    """A component is missing or did not start; the message says which and where its log is."""


@dataclass
class Process:
    name: str  # redis, gunicorn-1, nginx
    kind: str  # redis | gunicorn | nginx
    pid: int
    port: int
    log: str
    url: str = ""

    def stop_signal(self) -> signal.Signals:
        return STOP_SIGNALS[self.kind]


@dataclass
class Stack:
    run_dir: Path
    instances: int = 2
    port: int = 0  # nginx's plain HTTP port (it only redirects); 0 picks a free one
    host: str = "127.0.0.1"
    tls_port: int = 0  # nginx's HTTPS port; 0 picks a free one
    certificate: nginx.Certificate | None = None  # None: a self-signed one made with openssl in the run folder
    model_path: str | None = None
    rate_limit: str | None = None
    env: dict = field(default_factory=dict)  # extra environment for the gunicorn instances
    processes: list[Process] = field(default_factory=list)

    def __post_init__(self):
        self.run_dir = Path(self.run_dir).resolve()
        self._popen: dict[str, subprocess.Popen] = {}

    # ------------------------------------------------------------ start

    def start(self) -> "Stack":
        nginx_binary, redis = find_binary("nginx", "NGINX"), find_binary("redis-server", "REDIS_SERVER")
        missing = [n for n, b in (("nginx", nginx_binary), ("redis-server", redis)) if not b]
        if missing:
            raise StackError(f"{' and '.join(missing)} not found; on Debian/Ubuntu: apt-get install -y nginx redis-server "
                             "(or `make services`)")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            redis_port = free_port(self.host)
            self._spawn("redis", "redis", redis_port, [
                redis, "--port", str(redis_port), "--bind", self.host, "--dir", str(self.run_dir),
                "--pidfile", str(self.run_dir / "redis.pid"), "--logfile", str(self.run_dir / "redis.log"),
                "--save", "", "--appendonly", "no", "--daemonize", "no", "--protected-mode", "yes"])
            self._wait(lambda: self._redis_ping(redis_port), "redis")
            storage = f"redis://{self.host}:{redis_port}/0"
            secret = os.environ.get("SECRET_KEY") or secrets.token_hex(32)  # ONE key for every host
            for i in range(1, self.instances + 1):
                self.start_instance(i, secret, storage)
            for proc in self.gunicorns():
                self._wait(lambda p=proc: http_status(p.url + "/readyz") == 200, proc.name)
            self.port = self.port or free_port(self.host)
            self.tls_port = self.tls_port or free_port(self.host)
            self.certificate = self.certificate or nginx.self_signed_certificate(self.run_dir / "tls", self.host)
            conf = self.write_nginx_conf()
            self._spawn("nginx", "nginx", self.tls_port, [nginx_binary, "-p", str(self.run_dir), "-c", str(conf),
                                                          "-e", str(self.run_dir / "nginx-error.log")])
            self._wait(lambda: http_status(self.url + "/healthz", cafile=self.certificate.chain) == 200, "nginx")
        except BaseException:
            self.stop()
            raise
        self.save()
        return self

    def start_instance(self, index: int, secret: str, storage: str) -> Process:
        port = free_port(self.host)
        env = {k: v for k, v in os.environ.items() if k not in ("PORT", "HOST")}
        env.update({
            "HOST": self.host, "PORT": str(port), "SECRET_KEY": secret, "RATE_LIMIT_STORAGE_URI": storage,
            "TRUSTED_PROXY_HOPS": "1",  # nginx is the one hop in front
            "WEB_CONCURRENCY": os.environ.get("WEB_CONCURRENCY", "1"),
            "ACCESS_LOG": str(self.run_dir / f"gunicorn-{index}-access.log"),
            "TF_CPP_MIN_LOG_LEVEL": "2",
        })
        if self.model_path:
            env["MODEL_PATH"] = str(self.model_path)
        if self.rate_limit is not None:
            env["RATE_LIMIT"] = self.rate_limit
        env.update(self.env)
        gunicorn = str(Path(sys.executable).with_name("gunicorn"))
        return self._spawn(f"gunicorn-{index}", "gunicorn", port, [gunicorn, "-c", "gunicorn.conf.py", "wsgi:app"], env=env)

    def write_nginx_conf(self) -> Path:
        """nginx.conf in the run folder: HTTP on ``port`` redirecting to HTTPS on ``tls_port``, every instance upstream."""
        certificate = self.certificate or nginx.Certificate(str(self.run_dir / "tls" / "tls-certificate.pem"),
                                                            str(self.run_dir / "tls" / "tls-key.pem"))
        upstreams = [p.url.split("//")[1] for p in self.gunicorns()]
        text = nginx.render(self.run_dir, self.host, self.port, self.tls_port or 443, upstreams, certificate,
                            self.env.get("RATE_LIMIT", self.rate_limit))  # the instances' own limit (start_instance)
        return nginx.write_conf(self.run_dir, text)

    def _spawn(self, name: str, kind: str, port: int, cmd: list[str], env: dict | None = None) -> Process:
        log_path = self.run_dir / f"{name}.log"
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)  # its own process group: stop/kill reach its children too
        proc = Process(name, kind, popen.pid, port, str(log_path), f"http://{self.host}:{port}")
        self._popen[name] = popen
        self.processes = [p for p in self.processes if p.name != name] + [proc]
        return proc

    def _wait(self, ready, name: str) -> None:
        deadline = time.monotonic() + BOOT_SECONDS
        proc = self.get(name)
        while not ready():
            if not alive(proc.pid):
                raise StackError(f"{name} exited while starting; see {proc.log}:\n" + tail(proc.log))
            if time.monotonic() > deadline:
                raise StackError(f"{name} was not ready after {BOOT_SECONDS:.0f} s; see {proc.log}:\n" + tail(proc.log))
            time.sleep(0.3)

    def _redis_ping(self, port: int) -> bool:
        try:
            with socket.create_connection((self.host, port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    # ------------------------------------------------------------ while running

    @property
    def url(self) -> str:
        """Where clients go: nginx over HTTPS (check it against ``certificate.chain``)."""
        return f"https://{self.host}:{self.tls_port}"

    @property
    def http_url(self) -> str:
        """nginx's plain HTTP side, which only redirects to ``url``."""
        return f"http://{self.host}:{self.port}"

    def get(self, name: str) -> Process:
        return next(p for p in self.processes if p.name == name)

    def gunicorns(self) -> list[Process]:
        return [p for p in self.processes if p.kind == "gunicorn"]

    def kill_instance(self, name: str) -> None:
        """SIGKILL one gunicorn instance, master and workers at once: a host that loses power."""
        os.killpg(self.get(name).pid, signal.SIGKILL)
        self._reap(name, 10)

    def status(self) -> dict[str, bool]:
        return {p.name: alive(p.pid) for p in self.processes}

    # ------------------------------------------------------------ stop

    def stop(self, timeout: float = 30.0) -> dict[str, str]:
        """Stop nginx first (no new requests), then the instances, then Redis, each gracefully.

        Returns, per process, how it ended: "stopped" (by its graceful signal), "already gone",
        or "killed" (it outlived ``timeout`` and got SIGKILL).
        """
        order = {"nginx": 0, "gunicorn": 1, "redis": 2}
        outcome = {}
        for proc in sorted(self.processes, key=lambda p: order[p.kind]):
            if not alive(proc.pid):
                self._reap(proc.name, 0)
                outcome[proc.name] = "already gone"
                continue
            try:
                os.killpg(proc.pid, proc.stop_signal())
            except ProcessLookupError:
                pass
            if self._reap(proc.name, timeout):
                outcome[proc.name] = "stopped"
            else:
                os.killpg(proc.pid, signal.SIGKILL)
                self._reap(proc.name, 10)
                outcome[proc.name] = "killed"
        (self.run_dir / "stack.json").unlink(missing_ok=True)
        return outcome

    def _reap(self, name: str, timeout: float) -> bool:
        """Wait up to ``timeout`` for ``name``'s whole process group to end; True if it did."""
        proc = self.get(name)
        popen = self._popen.get(name)
        deadline = time.monotonic() + timeout
        while True:
            if popen is not None:
                popen.poll()
            if not alive(proc.pid) and not group_alive(proc.pid):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)

    # ------------------------------------------------------------ state, for the CLI

    def save(self) -> None:
        state = {"port": self.port, "tls_port": self.tls_port, "host": self.host, "instances": self.instances,
                 "certificate": asdict(self.certificate) if self.certificate else None,
                 "processes": [asdict(p) for p in self.processes]}
        (self.run_dir / "stack.json").write_text(json.dumps(state, indent=2) + "\n")

    @classmethod
    def load(cls, run_dir) -> "Stack":
        state = json.loads((Path(run_dir) / "stack.json").read_text())
        stack = cls(Path(run_dir), instances=state["instances"], port=state["port"], host=state["host"],
                    tls_port=state.get("tls_port", 0),
                    certificate=nginx.Certificate(**state["certificate"]) if state.get("certificate") else None)
        stack.processes = [Process(**p) for p in state["processes"]]
        return stack


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Start/stop nginx + N gunicorn hosts + Redis on loopback (issue #17).")
    p.add_argument("command", choices=("start", "stop", "status"))
    p.add_argument("--run-dir", default="run/stack", help="config, pid, log and temp files (default run/stack)")
    p.add_argument("--instances", type=int, default=2, help="gunicorn instances, each standing for a host (default 2)")
    p.add_argument("--port", type=int, default=8080, help="nginx's HTTP port on 127.0.0.1, redirecting to HTTPS (default 8080)")
    p.add_argument("--tls-port", type=int, default=8443, help="nginx's HTTPS port on 127.0.0.1 (default 8443)")
    p.add_argument("--certificate", help="PEM certificate chain for nginx (default: a self-signed one, made with openssl)")
    p.add_argument("--certificate-key", help="PEM key of --certificate")
    p.add_argument("--model", default=os.environ.get("MODEL_PATH"), help="the .h5 every instance serves (default MODEL_PATH)")
    p.add_argument("--rate-limit", default=os.environ.get("RATE_LIMIT"), help="e.g. 60/minute, counted once in Redis")
    args = p.parse_args(argv)
    if args.command == "start":
        if (Path(args.run_dir) / "stack.json").exists():
            print(f"error: a stack already runs from {args.run_dir}; stop it first: python -m deploy.stack stop "
                  f"--run-dir {args.run_dir}", file=sys.stderr)
            return 1
        try:
            certificate = nginx.Certificate(args.certificate, args.certificate_key) if args.certificate else None
            stack = Stack(Path(args.run_dir), args.instances, args.port, model_path=args.model, rate_limit=args.rate_limit,
                          tls_port=args.tls_port, certificate=certificate).start()
        except StackError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        for proc in stack.processes:
            where = f"redis://{stack.host}:{proc.port}" if proc.kind == "redis" else proc.url
            print(f"{proc.name:11} pid {proc.pid:<7} {where}")
        print(f"serving on {stack.url} (certificate {stack.certificate.chain}; {stack.http_url} redirects there; logs in "
              f"{stack.run_dir}); stop: python -m deploy.stack stop --run-dir {args.run_dir}")
        return 0
    if not (Path(args.run_dir) / "stack.json").exists():
        print(f"no stack runs from {args.run_dir}")
        return 0 if args.command == "stop" else 1
    stack = Stack.load(args.run_dir)
    if args.command == "status":
        for name, up in stack.status().items():
            print(f"{name:11} {'running' if up else 'gone'}")
        return 0 if all(stack.status().values()) else 1
    for name, how in stack.stop().items():
        print(f"{name:11} {how}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
