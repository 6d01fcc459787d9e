"""A real two-node SLURM cluster on this machine, for the distributed tests.

Two network namespaces joined by a veth pair (10.77.0.1 and 10.77.0.2) are the two nodes. Each node's daemons
run under ``nsenter --net`` plus ``unshare --uts --mount`` so that the node has its own host name and a
bind-mounted hosts file that resolves both node names. ``slurmctld`` runs in node 1's namespace next to its
``slurmd``; ``munged`` runs in the main namespace (its socket is a file, reachable from every namespace).
All state, spool and logs live under one temporary folder; daemons are stopped by their PIDs.

The client commands (``sbatch``, ``squeue``, ``scancel``, ``scontrol``, ``sinfo``, ``srun``) reach the controller
from node 1's namespace: the cluster writes wrapper scripts into ``<root>/bin`` that enter that namespace when
called from the main one, so a program that calls ``sbatch`` from PATH (``seespeaker slurm submit``) works
unchanged with ``env=cluster.env()``.

Needs root and ``apt-get install -y slurm-wlm munge``. Run this file to bring a cluster up by hand.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

NODES = (("node1", "10.77.0.1"), ("node2", "10.77.0.2"))
CLIENTS = ("sbatch", "squeue", "scancel", "scontrol", "sinfo", "srun", "sacct")
DAEMONS = ("munged", "slurmctld", "slurmd")
INSTALL_HINT = "apt-get install -y slurm-wlm munge iproute2"
FINISHED_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                   "DEADLINE", "PREEMPTED"}

SLURM_CONF = """\
ClusterName=seespeakertest
SlurmctldHost=node1(10.77.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={munge_socket},cred_expire=10
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/builtin
KillWait=5
SchedulerParameters=sched_interval=1
MinJobAge=600
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd-%n.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=node1 NodeAddr=10.77.0.1 CPUs=2 RealMemory=8000 State=UNKNOWN
NodeName=node2 NodeAddr=10.77.0.2 CPUs=2 RealMemory=8000 State=UNKNOWN
PartitionName=debug Nodes=node1,node2 Default=YES MaxTime=INFINITE State=UP
"""


class ClusterError(RuntimeError):
    """The test cluster could not be started or a job did not behave."""


def missing_programs() -> list[str]:
    """The SLURM / munge programs this cluster needs that are not installed."""
    names = DAEMONS + ("sbatch", "squeue", "scontrol", "sinfo", "ip", "nsenter", "unshare")
    return [name for name in names if not _which(name)]


def _which(name: str) -> str | None:
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin:/usr/bin")


@dataclass
class SlurmCluster:
    """Two slurmd nodes and one controller in network namespaces under ``root``."""

    root: Path
    tag: str = field(default_factory=lambda: f"ss{os.getpid() % 100000}")
    pids: list[int] = field(default_factory=list)
    _procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def conf(self) -> Path:
        return self.root / "etc" / "slurm.conf"

    @property
    def bin_dir(self) -> Path:
        return self.root / "bin"

    @property
    def munge_socket(self) -> Path:
        return self.root / "munge" / "run" / "munge.socket"

    def netns(self, index: int) -> str:
        """Name of the network namespace of node ``index`` (0 or 1)."""
        return f"{self.tag}n{index + 1}"

    # ---- start ------------------------------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> SlurmCluster:
        """Bring up munge, the namespaces, the controller and both nodes; wait until both nodes are idle."""
        missing = missing_programs()
        if missing:
            raise ClusterError(f"missing programs {missing}: install them with `{INSTALL_HINT}` (as root)")
        for sub in ("etc", "state", "spool", "run", "log", "bin", "hosts"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        self._start_munge()
        self._create_namespaces()
        self._write_config()
        self._write_client_wrappers()
        self._spawn_in_node(0, [_which("slurmctld"), "-D", "-i", "-f", str(self.conf)], "slurmctld")
        for index, (name, _) in enumerate(NODES):
            self._spawn_in_node(index, [_which("slurmd"), "-D", "-N", name, "-f", str(self.conf)], f"slurmd-{name}")
        self._wait_idle(timeout)
        return self

    def _start_munge(self) -> None:
        munge = self.root / "munge"
        for sub in ("etc", "run", "log", "lib"):
            (munge / sub).mkdir(parents=True, exist_ok=True)
        key = munge / "etc" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        for path in (munge, munge / "etc", munge / "run", munge / "log", munge / "lib", key):
            shutil.chown(path, "munge", "munge")
        for path in (munge, munge / "run"):
            os.chmod(path, 0o755)
        for path in (munge / "etc", munge / "log", munge / "lib"):
            os.chmod(path, 0o700)
        cmd = [_which("munged"), "--foreground", f"--socket={self.munge_socket}", f"--key-file={key}",
               f"--pid-file={munge / 'run' / 'munged.pid'}", f"--log-file={munge / 'log' / 'munged.log'}",
               f"--seed-file={munge / 'lib' / 'munged.seed'}"]
        self._spawn(cmd, "munged", user="munge", group="munge")
        deadline = time.monotonic() + 10
        while not self.munge_socket.exists():
            if time.monotonic() > deadline:
                raise ClusterError(f"munged did not create {self.munge_socket}:\n{self.log('munged')}")
            time.sleep(0.05)

    def _create_namespaces(self) -> None:
        veth = (f"{self.tag}a", f"{self.tag}b")
        ns = (self.netns(0), self.netns(1))
        _run(["ip", "netns", "add", ns[0]])
        _run(["ip", "netns", "add", ns[1]])
        _run(["ip", "link", "add", veth[0], "type", "veth", "peer", "name", veth[1]])
        for index, (_name, address) in enumerate(NODES):
            _run(["ip", "link", "set", veth[index], "netns", ns[index]])
            inside = ["nsenter", f"--net=/run/netns/{ns[index]}", "ip"]
            _run(inside + ["addr", "add", f"{address}/24", "dev", veth[index]])
            _run(inside + ["link", "set", veth[index], "up"])
            _run(inside + ["link", "set", "lo", "up"])
        hosts = "127.0.0.1 localhost\n" + "".join(f"{addr} {name}\n" for name, addr in NODES)
        for name, _ in NODES:
            (self.root / "hosts" / name).write_text(hosts)

    def _write_config(self) -> None:
        self.conf.write_text(SLURM_CONF.format(root=self.root, munge_socket=self.munge_socket))

    def _write_client_wrappers(self) -> None:
        main_ns = os.readlink("/proc/self/ns/net")
        for name in CLIENTS:
            real = _which(name)
            if real is None:
                continue
            wrapper = self.bin_dir / name
            wrapper.write_text(
                "#!/bin/sh\n"
                f"export SLURM_CONF='{self.conf}'\n"
                f"if [ \"$(readlink /proc/self/ns/net)\" = '{main_ns}' ]; then\n"
                f"  exec nsenter --net=/run/netns/{self.netns(0)} {real} \"$@\"\n"
                "fi\n"
                f"exec {real} \"$@\"\n"
            )
            wrapper.chmod(0o755)

    def _spawn_in_node(self, index: int, argv: list[str], log_name: str) -> None:
        name = NODES[index][0]
        hosts = self.root / "hosts" / name
        script = f"hostname {name} && mount --bind {hosts} /etc/hosts && exec \"$@\""
        cmd = ["nsenter", f"--net=/run/netns/{self.netns(index)}", "unshare", "--uts", "--mount",
               "sh", "-c", script, "sh", *argv]
        self._spawn(cmd, log_name)

    def _spawn(self, cmd: list[str], log_name: str, **kwargs) -> None:
        log = open(self.root / "log" / f"{log_name}.stdout", "wb")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, "SLURM_CONF": str(self.conf)}, **kwargs)
        log.close()
        self._procs.append(proc)
        self.pids.append(proc.pid)

    def _wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        states = ""
        while time.monotonic() < deadline:
            for proc in self._procs:
                if proc.poll() is not None:
                    raise ClusterError(f"a daemon exited ({proc.args[-5:]}, code {proc.returncode}):\n"
                                       + self.logs())
            result = self.client("sinfo", "-h", "-N", "-o", "%N %t", check=False)
            states = result.stdout.strip()
            lines = [line.split() for line in states.splitlines()]
            if len(lines) == len(NODES) and all(state == "idle" for _, state in lines):
                return
            time.sleep(0.1)
        raise ClusterError(f"nodes not idle after {timeout}s (sinfo: {states!r}):\n{self.logs()}")

    # ---- clients ----------------------------------------------------------------------------------------------
    def env(self, base: dict | None = None) -> dict:
        """An environment whose PATH finds this cluster's client wrappers first."""
        env = dict(os.environ if base is None else base)
        env["PATH"] = f"{self.bin_dir}:{env.get('PATH', '')}"
        env["SLURM_CONF"] = str(self.conf)
        return env

    def client(self, name: str, *args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        """Run a SLURM client command against this cluster."""
        result = subprocess.run([str(self.bin_dir / name), *args], capture_output=True, text=True,
                                env=self.env(), timeout=30, **kwargs)
        if check and result.returncode != 0:
            raise ClusterError(f"{name} {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def sbatch(self, script: str, *args: str, cwd: str | Path | None = None) -> str:
        """Submit a batch script's text; returns the job id."""
        out = self.client("sbatch", "--parsable", *args, input=script, cwd=cwd).stdout.strip()
        return out.split(";")[0]

    def squeue(self) -> list[tuple[str, str]]:
        """(job id, state) of every job the controller still lists as queued or running."""
        out = self.client("squeue", "-h", "-o", "%i %T").stdout
        return [tuple(line.split()[:2]) for line in out.splitlines() if line.strip()]

    def job_info(self, job: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (JobState, RestartCnt, NodeList, ExitCode, ...)."""
        out = self.client("scontrol", "show", "job", "-o", job).stdout
        info = {}
        for token in out.split():
            key, _, value = token.partition("=")
            info.setdefault(key, value)
        return info

    def job_state(self, job: str) -> str:
        return self.job_info(job).get("JobState", "UNKNOWN")

    def wait(self, job: str, timeout: float = 120.0, states: set[str] = FINISHED_STATES) -> str:
        """Poll until ``job`` reaches one of ``states``; returns the state."""
        deadline = time.monotonic() + timeout
        state = "UNKNOWN"
        while time.monotonic() < deadline:
            state = self.job_state(job)
            if state in states:
                return state
            time.sleep(0.25)
        raise ClusterError(f"job {job} still {state} after {timeout}s:\n{self.logs()}")

    def cancel_all(self) -> None:
        """Cancel every job on the cluster and wait briefly until none runs."""
        for job, _ in self.squeue():
            self.client("scancel", job, check=False)
        deadline = time.monotonic() + 15
        while self.squeue() and time.monotonic() < deadline:
            time.sleep(0.2)

    # ---- logs and teardown ------------------------------------------------------------------------------------
    def log(self, name: str) -> str:
        """The tail of one daemon log (munged, slurmctld, slurmd-node1, slurmd-node2)."""
        candidates = [self.root / "log" / f"{name}.log", self.root / "log" / f"{name}.stdout",
                      self.root / "munge" / "log" / f"{name}.log"]
        text = "".join(path.read_text(errors="replace") for path in candidates if path.exists())
        return text[-3000:]

    def logs(self) -> str:
        return "\n".join(f"--- {name}\n{self.log(name)}" for name in
                         ("munged", "slurmctld", "slurmd-node1", "slurmd-node2"))

    def stop(self) -> None:
        """Stop every process this cluster started (by PID) and delete the namespaces."""
        if self.bin_dir.exists() and any(proc.poll() is None for proc in self._procs[1:]):
            try:
                self.cancel_all()
            except (ClusterError, subprocess.TimeoutExpired):
                pass
        for proc in reversed(self._procs):
            _terminate(proc)
        for pid in self._pids_in_namespaces():
            _kill(pid, signal.SIGKILL)
        for index in range(len(NODES)):
            subprocess.run(["ip", "netns", "delete", self.netns(index)], capture_output=True)
        subprocess.run(["ip", "link", "delete", f"{self.tag}a"], capture_output=True)

    def _pids_in_namespaces(self) -> list[int]:
        """Processes left in this cluster's node namespaces (job steps the daemons started)."""
        targets = set()
        for index in range(len(NODES)):
            try:
                targets.add(os.stat(f"/run/netns/{self.netns(index)}").st_ino)
            except FileNotFoundError:
                pass
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if os.stat(entry / "ns" / "net").st_ino in targets:
                        found.append(int(entry.name))
                except OSError:
                    continue
        return found


def _run(cmd: list[str]) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise ClusterError(f"{' '.join(cmd)} failed: {result.stderr.strip()}")


def _terminate(proc: subprocess.Popen, grace: float = 5.0) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def start_cluster(root: str | Path | None = None) -> SlurmCluster:
    """Start a cluster in ``root`` (a new temporary folder by default); stop it with ``cluster.stop()``."""
    path = Path(root) if root else Path(tempfile.mkdtemp(prefix="seespeaker-slurm-"))
    cluster = SlurmCluster(path)
    try:
        return cluster.start()
    except BaseException:
        cluster.stop()
        raise


def _stop_on_signal(signum, _frame) -> None:
    raise KeyboardInterrupt(signum)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _stop_on_signal)
    signal.signal(signal.SIGINT, _stop_on_signal)
    started = time.monotonic()
    cluster = start_cluster()
    print(f"cluster up in {time.monotonic() - started:.2f}s at {cluster.root}; "
          f"use: export PATH={cluster.bin_dir}:$PATH; Ctrl-C or SIGTERM stops it", flush=True)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)
