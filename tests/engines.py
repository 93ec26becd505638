"""Real engines on loopback for the `engines` tests: a standalone Spark cluster (a master and two workers from
PyPI pyspark's own jars) and a Flink session cluster (a jobmanager and two taskmanagers from PyPI's Flink
distribution), each with Beam's job server pointed at it and an EXTERNAL pool of SDK workers, every process
started here and stopped by its process id.

`make test-engines` prepares what they need, once, in WIT_ENGINES (~/.cache/wit-engines; `python -m
tests.engines prepare`): a virtualenv with wit, pyspark and the apache-beam that matches the job servers' jars;
those jars resolved from Maven Central (docker/spark/pom.xml, docker/flink/pom.xml); and Flink's distribution
(apache-flink and apache-flink-libraries, without their dependencies, in a virtualenv of their own: apache-flink
pins an older Beam). WIT_ENGINES_PYTHON, WIT_SPARK_JOB_SERVER, WIT_FLINK_JOB_SERVER and WIT_FLINK_HOME name
others.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent
# The newest Beam whose Spark runner Maven Central serves with its dependencies (see docker/spark/pom.xml), and
# the Spark its runner is built for (3.5, Scala 2.12).
BEAM = "2.62.0"
PYSPARK = "3.5.9"
ENGINES = Path(os.environ.get("WIT_ENGINES", Path.home() / ".cache" / "wit-engines")) / f"beam-{BEAM}"
ENGINES_PYTHON = os.environ.get("WIT_ENGINES_PYTHON", str(ENGINES / "venv" / "bin" / "python"))
SPARK_JOB_SERVER = os.environ.get("WIT_SPARK_JOB_SERVER", str(ENGINES / "spark-job-server"))
# The newest Flink that Beam's runner supports and Maven Central serves it for (beam-runners-flink-1.19, built
# against 1.19.0); the cluster is PyPI's newest 1.19 release.
FLINK = "1.19.3"
FLINK_JOB_SERVER = os.environ.get("WIT_FLINK_JOB_SERVER", str(ENGINES / "flink-job-server"))
FLINK_VENV = ENGINES / f"flink-{FLINK}"
FAIL_ONCE = Path(__file__).parent / "failonce"  # its sitecustomize fails one bundle once, when armed

# What Spark's own launcher opens for Java 17 (its JavaModuleOptions); the job server hosts a Spark driver.
JAVA_OPENS = [f"--add-opens=java.base/{p}=ALL-UNNAMED" for p in (
    "java.lang", "java.lang.invoke", "java.lang.reflect", "java.io", "java.net", "java.nio", "java.util",
    "java.util.concurrent", "java.util.concurrent.atomic", "sun.nio.ch", "sun.nio.cs", "sun.security.action",
    "sun.util.calendar")]


POOL = """
import logging, time
from apache_beam.runners.worker.worker_pool_main import BeamFnExternalWorkerPoolServicer
logging.basicConfig(level=logging.INFO)
address, server = BeamFnExternalWorkerPoolServicer.start(use_process=False, port={port})  # kept: a dropped server stops
time.sleep(10 ** 9)
"""


def spark_ready() -> str:
    """Why the Spark tests cannot run here, or '' when they can."""
    if not os.access(ENGINES_PYTHON, os.X_OK):
        return "no engines virtualenv (WIT_ENGINES_PYTHON): run `make test-engines`"
    if not SPARK_JOB_SERVER or not any(Path(SPARK_JOB_SERVER).glob("beam-runners-spark-3-*.jar")):
        return "no Spark job server jars (WIT_SPARK_JOB_SERVER): run `make test-engines`"
    return ""


def flink_home() -> Path:
    """The Flink distribution: its bin/, conf/ and lib/ as PyPI's pyflink holds them."""
    if os.environ.get("WIT_FLINK_HOME"):
        return Path(os.environ["WIT_FLINK_HOME"])
    found = sorted(FLINK_VENV.glob("lib/python*/site-packages/pyflink"))
    return found[0] if found else FLINK_VENV / "pyflink"


def flink_ready() -> str:
    """Why the Flink tests cannot run here, or '' when they can."""
    if not os.access(ENGINES_PYTHON, os.X_OK):
        return "no engines virtualenv (WIT_ENGINES_PYTHON): run `make test-engines`"
    if not any(Path(FLINK_JOB_SERVER).glob("beam-runners-flink-*.jar")):
        return "no Flink job server jars (WIT_FLINK_JOB_SERVER): run `make test-engines`"
    if not (flink_home() / "bin" / "jobmanager.sh").exists() or not any((flink_home() / "lib").glob("flink-dist*")):
        return "no Flink distribution (WIT_FLINK_HOME): run `make test-engines`"
    return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, log: Path, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited ({proc.returncode}); see {log}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"nothing listens on port {port} after {seconds:.0f} s; see {log}")


class Cluster:
    """Processes started here, each in its own session and stopped by its process id, and an EXTERNAL pool of
    SDK workers; `beam_args` submit a pipeline to the cluster's job server."""

    name = ""

    def __init__(self, folder: Path):
        self.folder = folder
        self.procs: list[subprocess.Popen] = []
        self.fail_once_armed = folder / "fail-once-armed"

    def _start(self, name: str, cmd: list[str], env: Optional[dict] = None) -> subprocess.Popen:
        log = self.folder / f"{name}.log"
        with open(log, "wb") as out:  # each in its own session: stopping it stops what it started
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                    start_new_session=True, cwd=self.folder)
        self.procs.append(proc)
        return proc

    def __enter__(self) -> "Cluster":
        try:
            self._start_all()
            self._start_pool()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_all(self) -> None:
        raise NotImplementedError

    def _start_job_server(self, classpath: str, driver: str, *flags: str) -> None:
        self.job_port = free_port()
        proc = self._start("jobserver", ["java", *JAVA_OPENS, "-cp", classpath, driver, *flags,
                                         "--job-host", "127.0.0.1", "--job-port", str(self.job_port),
                                         "--artifact-port", str(free_port()), "--expansion-port", str(free_port())])
        _wait_for_port(self.job_port, proc, self.folder / "jobserver.log")

    def _start_pool(self) -> None:
        # SDK workers as threads of one pool process. `worker_pool_main` starts them as processes and stops them
        # by worker id, which two executors repeat ("5-1" on each): one executor's end then kills the other's
        # worker, and its task waits for it forever.
        self.pool_port = free_port()
        proc = self._start("pool", [ENGINES_PYTHON, "-c", POOL.format(port=self.pool_port)],
                           {"PYTHONPATH": str(FAIL_ONCE), "WIT_FAIL_ONCE": str(self.fail_once_armed)})
        _wait_for_port(self.pool_port, proc, self.folder / "pool.log")

    @property
    def beam_args(self) -> list[str]:
        return ["--runner=PortableRunner", f"--job_endpoint=127.0.0.1:{self.job_port}",
                "--environment_type=EXTERNAL", f"--environment_config=127.0.0.1:{self.pool_port}"]

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs = []

    def __exit__(self, *exc) -> None:
        self.stop()


def _until(done, seconds: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} after {seconds:.0f} s; see {log}")
        time.sleep(0.3)


class SparkCluster(Cluster):
    """A master, two one-core workers, and Beam's Spark job server driving them."""

    name = "spark"

    def __init__(self, folder: Path, workers: int = 2):
        super().__init__(folder)
        self.workers = workers
        self.spark_home = subprocess.run(
            [ENGINES_PYTHON, "-c", "import os, pyspark; print(os.path.dirname(pyspark.__file__))"],
            check=True, capture_output=True, text=True).stdout.strip()

    def _start_all(self) -> None:
        spark = {"SPARK_HOME": self.spark_home, "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_LOG_DIR": str(self.folder),
                 "SPARK_NO_DAEMONIZE": "1"}
        spark_class = os.path.join(self.spark_home, "bin", "spark-class")
        master = free_port()
        proc = self._start("master", [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                                      "--port", str(master), "--webui-port", str(free_port())], spark)
        _wait_for_port(master, proc, self.folder / "master.log")
        self.master_url = f"spark://127.0.0.1:{master}"
        for i in range(self.workers):
            self._start(f"worker{i}", [spark_class, "org.apache.spark.deploy.worker.Worker", self.master_url,
                                       "--host", "127.0.0.1", "--cores", "1", "--memory", "3g",
                                       "--webui-port", str(free_port()), "--work-dir", str(self.folder / f"w{i}")],
                        spark)
        self._start_job_server(f"{SPARK_JOB_SERVER}/*:{self.spark_home}/jars/*",
                               "org.apache.beam.runners.spark.SparkJobServerDriver",
                               "--spark-master-url", self.master_url)
        log = self.folder / "master.log"
        _until(lambda: log.read_text(errors="replace").count("Registering worker") >= self.workers, 60,
               f"{self.workers} Spark workers did not register", log)


# A session cluster's settings: loopback only, ports chosen here, one slot per taskmanager, a failed task
# restarted (a batch job's default is to fail the job), and network buffers for the query list's job, whose
# many exchanges at parallelism 2 ask 512 of them at once (16 MiB, of the 110 MiB Flink gives by default to a
# taskmanager of 1.5 GiB, most of it held by the other tasks).
FLINK_CONFIG = """\
jobmanager.rpc.address: 127.0.0.1
jobmanager.bind-host: 127.0.0.1
jobmanager.rpc.port: {rpc}
jobmanager.memory.process.size: 1024m
taskmanager.host: 127.0.0.1
taskmanager.bind-host: 127.0.0.1
taskmanager.memory.process.size: 2048m
taskmanager.memory.network.min: 256m
taskmanager.memory.network.max: 256m
taskmanager.numberOfTaskSlots: 1
parallelism.default: {workers}
rest.address: 127.0.0.1
rest.bind-address: 127.0.0.1
rest.port: {rest}
blob.server.port: 0
taskmanager.rpc.port: 0
taskmanager.data.port: 0
restart-strategy.type: fixed-delay
restart-strategy.fixed-delay.attempts: 2
restart-strategy.fixed-delay.delay: 1 s
"""


class FlinkCluster(Cluster):
    """A jobmanager and two one-slot taskmanagers from PyPI's Flink distribution, started by its own scripts,
    and Beam's Flink job server submitting to it."""

    name = "flink"

    def __init__(self, folder: Path, workers: int = 2):
        super().__init__(folder)
        self.workers = workers

    def _taskmanagers(self) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.rest}/taskmanagers", timeout=2) as r:
                return len(json.load(r)["taskmanagers"])
        except OSError:
            return 0

    def _start_all(self) -> None:
        home = flink_home()
        conf = self.folder / "conf"
        conf.mkdir()
        for p in (home / "conf").glob("log4j*.properties"):
            shutil.copy(p, conf)
        self.rest = free_port()
        (conf / "config.yaml").write_text(FLINK_CONFIG.format(rpc=free_port(), rest=self.rest, workers=self.workers))
        env = {"FLINK_CONF_DIR": str(conf), "FLINK_LOG_DIR": str(self.folder)}
        proc = self._start("jobmanager", [str(home / "bin" / "jobmanager.sh"), "start-foreground"], env)
        _wait_for_port(self.rest, proc, self.folder / "jobmanager.log")
        for i in range(self.workers):
            self._start(f"taskmanager{i}", [str(home / "bin" / "taskmanager.sh"), "start-foreground"], env)
        _until(lambda: self._taskmanagers() >= self.workers, 90,
               f"{self.workers} Flink taskmanagers did not register", self.folder / "jobmanager.log")
        self._start_job_server(f"{FLINK_JOB_SERVER}/*", "org.apache.beam.runners.flink.FlinkJobServerDriver",
                               f"--flink-master=127.0.0.1:{self.rest}")

    @property
    def beam_args(self) -> list[str]:
        # Beam's Flink runner runs every task on one slot unless the pipeline says how many
        return [*super().beam_args, f"--parallelism={self.workers}"]


def wit(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`wit ARGS` run by the engines virtualenv's Python (its Beam matches the job server)."""
    proc = subprocess.run([ENGINES_PYTHON, "-m", "wit.cli", *args], capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"wit {' '.join(args[:2])} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def prepare() -> None:
    """The engines' virtualenv, the job servers' jars and Flink's distribution, each made once; wit is installed
    into the virtualenv from this checkout every time (editable, without its dependencies: quick). What cannot
    be had is said in one line, and the tests that need it are skipped."""
    ENGINES.mkdir(parents=True, exist_ok=True)
    venv = ENGINES / "venv"
    if not (venv / ".ready").exists():  # made where it stays: a virtualenv's scripts name their own path
        print(f"making the engines' virtualenv (apache-beam {BEAM}, pyspark {PYSPARK}) in {venv}, once", flush=True)
        shutil.rmtree(venv, ignore_errors=True)
        ok = subprocess.run([sys.executable, "-m", "venv", str(venv)]).returncode == 0 and subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"apache-beam=={BEAM}", f"pyspark=={PYSPARK}",
             f"{REPO}[pipelines,queries]"]).returncode == 0
        if not ok:
            shutil.rmtree(venv, ignore_errors=True)
            print(f"the engines' virtualenv could not be made (pip install apache-beam=={BEAM} pyspark=={PYSPARK}): "
                  "the Spark and Flink checks are skipped")
            return
        (venv / ".ready").touch()
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "-e", str(REPO)],
                   check=True)
    _job_server("Spark", "spark", Path(SPARK_JOB_SERVER))
    _job_server("Flink", "flink", Path(FLINK_JOB_SERVER))
    if not (FLINK_VENV / ".ready").exists():
        print(f"installing Flink {FLINK}'s distribution (apache-flink, apache-flink-libraries) in {FLINK_VENV}, once",
              flush=True)
        shutil.rmtree(FLINK_VENV, ignore_errors=True)
        python = FLINK_VENV / "bin" / "python"
        ok = subprocess.run([sys.executable, "-m", "venv", str(FLINK_VENV)]).returncode == 0 and subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--no-deps", f"apache-flink=={FLINK}",
             f"apache-flink-libraries=={FLINK}"]).returncode == 0
        if not ok:
            shutil.rmtree(FLINK_VENV, ignore_errors=True)
            print(f"Flink {FLINK} could not be installed (pip install --no-deps apache-flink=={FLINK} "
                  f"apache-flink-libraries=={FLINK}): the Flink checks are skipped")
            return
        (FLINK_VENV / ".ready").touch()


def _job_server(engine: str, name: str, jars: Path) -> None:
    """Beam's job server for `engine` as a folder of jars, resolved from Maven Central by docker/NAME/pom.xml."""
    if any(jars.glob(f"beam-runners-{name}-*.jar")):
        return
    print(f"resolving Beam {BEAM}'s {engine} job server from Maven Central into {jars}, once", flush=True)
    tmp = jars.with_name(jars.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    done = shutil.which("mvn") and subprocess.run(
        ["mvn", "-q", "-B", "-f", str(REPO / "docker" / name / "pom.xml"), f"-Dbeam.version={BEAM}",
         "dependency:copy-dependencies", "-DincludeScope=runtime", f"-DoutputDirectory={tmp}"],
        stdout=subprocess.DEVNULL).returncode == 0
    if not done:
        print(f"Beam {BEAM}'s {engine} runner could not be resolved from Maven Central (mvn): the {engine} checks "
              "are skipped")
        return
    shutil.rmtree(jars, ignore_errors=True)
    tmp.rename(jars)


if __name__ == "__main__" and sys.argv[1:] == ["prepare"]:
    prepare()
