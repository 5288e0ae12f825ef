"""A real Apache Kafka broker for development and tests (KRaft, single node).

Development tooling, not part of the runtime (nothing under engine/, rules/ or replay/
imports it). From the repository root, ``python -m tests.servers.kafka up`` fetches Apache
Kafka's jars from Maven Central with Maven (Java 17 runs it) into ``<repo>/.kafka`` (once:
the tests and ``make kafka-up`` share them), formats the storage once and starts the broker
on localhost:9092 (controller on the next port), data in ``<repo>/.kafka/run-<port>``;
``down`` stops it. ``make kafka-up`` / ``make kafka-down`` call these (``KAFKA_PORT=...``
and ``KAFKA_DATA=...`` pick another port and data dir); the tests start their own broker
through :class:`Broker`. Point ``--bootstrap-servers`` at any existing cluster instead to
use your own.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

KAFKA_VERSION = "4.1.1"
LOG4J_VERSION = "2.24.3"
# One place for the jars (and the default data) of every broker: `make kafka-up`, the
# tests and the bench. Under the repository root (git-ignored), never in a package.
DEFAULT_HOME = Path(__file__).resolve().parent.parent.parent / ".kafka"

POM = f"""<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>medallion</groupId><artifactId>kafka-broker</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{KAFKA_VERSION}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId>
      <version>{LOG4J_VERSION}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId>
      <version>{LOG4J_VERSION}</version></dependency>
  </dependencies>
</project>
"""

LOG4J = """status = error
appender.file.type = File
appender.file.name = file
appender.file.fileName = ${sys:kafka.logs.dir}/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.file.ref = file
"""


@dataclass
class Broker:
    home: Path = DEFAULT_HOME
    port: int = 9092
    controller_port: int | None = None  # default: port + 1
    data: Path | None = None

    def __post_init__(self) -> None:
        self.home = Path(self.home).absolute()
        if self.controller_port is None:
            self.controller_port = self.port + 1
        if self.data is not None:
            self.data = Path(self.data).absolute()

    @property
    def libs(self) -> Path:
        return self.home / f"kafka-{KAFKA_VERSION}" / "libs"

    @property
    def run_dir(self) -> Path:
        return self.data or (self.home / f"run-{self.port}")

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def fetch(self) -> None:
        """Download the broker's jars from Maven Central (once)."""
        if self.libs.exists() and any(self.libs.glob("kafka_2.13-*.jar")):
            return
        if shutil.which("mvn") is None or shutil.which("java") is None:
            raise SystemExit("Kafka needs Maven and Java 17 on PATH (apt-get install maven openjdk-17-jre)")
        work = self.home / "fetch"
        work.mkdir(parents=True, exist_ok=True)
        (work / "pom.xml").write_text(POM)
        tmp = self.libs.with_suffix(".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run(["mvn", "-q", "-B", "dependency:copy-dependencies", f"-DoutputDirectory={tmp}",
                        "-DincludeScope=runtime"], cwd=work, check=True)
        tmp.rename(self.libs)

    def _java(self, *args: str) -> list[str]:
        logs = self.run_dir / "logs"
        return ["java", "-Xmx768m", f"-Dkafka.logs.dir={logs}",
                f"-Dlog4j2.configurationFile={self.run_dir / 'log4j2.properties'}",
                "-cp", f"{self.libs}/*", *args]

    def _config(self) -> Path:
        d = self.run_dir
        (d / "logs").mkdir(parents=True, exist_ok=True)
        (d / "log4j2.properties").write_text(LOG4J)
        cfg = d / "server.properties"
        cfg.write_text("\n".join([
            "process.roles=broker,controller", "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
            f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names=CONTROLLER",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            f"log.dirs={d / 'data'}", "num.partitions=4", "offsets.topic.replication.factor=1",
            "transaction.state.log.replication.factor=1", "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1", "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0", "message.max.bytes=4194304",
            "replica.fetch.max.bytes=4194304", "auto.create.topics.enable=true", ""]))
        return cfg

    def format(self) -> None:
        cfg = self._config()
        if (self.run_dir / "data" / "meta.properties").exists():
            return
        uuid = subprocess.run(self._java("kafka.tools.StorageTool", "random-uuid"), capture_output=True,
                              text=True, check=True).stdout.strip().splitlines()[-1]
        subprocess.run(self._java("kafka.tools.StorageTool", "format", "-t", uuid, "-c", str(cfg)),
                       capture_output=True, text=True, check=True)

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "broker.pid"

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text())
            # a broker this process started is its child: reap it once it exited (a zombie
            # still answers kill(pid, 0), and stop() would wait for it in vain)
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    return None
            os.kill(pid, 0)
            return pid
        except (FileNotFoundError, ValueError, ProcessLookupError):
            return None

    def start(self, timeout: float = 90.0) -> None:
        if self.pid() is not None:
            return
        self.fetch()
        self.format()
        out = open(self.run_dir / "logs" / "stdout.log", "ab")  # noqa: SIM115 (the broker keeps it)
        proc = subprocess.Popen(self._java("kafka.Kafka", str(self.run_dir / "server.properties")),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.pid_file.write_text(str(proc.pid))
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 90.0) -> None:
        from confluent_kafka.admin import AdminClient

        deadline = time.monotonic() + timeout
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        while time.monotonic() < deadline:
            if self.pid() is None:
                raise RuntimeError(f"the Kafka broker exited; see {self.run_dir / 'logs'}")
            try:
                if admin.list_topics(timeout=2).brokers:
                    return
            except Exception:  # not up yet
                pass
            time.sleep(0.5)
        raise RuntimeError(f"the Kafka broker did not start within {timeout}s; see {self.run_dir / 'logs'}")

    def stop(self, timeout: float = 10.0) -> None:
        pid = self.pid()
        if pid is None:
            return
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.pid() is not None:
            time.sleep(0.2)
        if self.pid() is not None:
            os.killpg(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.servers.kafka", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=["up", "down", "status", "fetch"])
    ap.add_argument("--home", type=Path, default=DEFAULT_HOME,
                    help="the jars (default: <repo>/.kafka, shared with the tests)")
    ap.add_argument("--port", type=int, default=9092)
    ap.add_argument("--controller-port", type=int, default=None, help="default: port + 1")
    ap.add_argument("--data", type=Path, default=None,
                    help="the broker's config, logs and data (default: <home>/run-<port>)")
    args = ap.parse_args(argv)
    b = Broker(args.home, args.port, args.controller_port, args.data)
    if args.action == "fetch":
        b.fetch()
    elif args.action == "up":
        b.start()
        print(f"Kafka {KAFKA_VERSION} is up on {b.bootstrap} (data in {b.run_dir})")
    elif args.action == "down":
        b.stop()
        print("Kafka is down")
    else:
        print(f"Kafka on {b.bootstrap}: {'running, pid ' + str(b.pid()) if b.pid() else 'not running'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
