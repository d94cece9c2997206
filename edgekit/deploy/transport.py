"""How deploy reaches the place that measures: run a shell command there, put files, fetch files, clear.

`Transport` does everything through three primitives (`_command`, `_send`, `_receive`); `Local`
implements them with this machine's shell and file system, `Ssh` with ssh and scp. The deploy flow
above them is one code path, so a local deploy tests the remote one.

Every command is an argument list; the one command line run on the device is assembled from
shlex-quoted parts only, never from unquoted user input.
"""

import os
import shlex
import shutil
import subprocess
from typing import Callable, Dict, List, Optional, Sequence

from ..artifacts import remove_if_exists, sha256_file
from ..device import layout
from ..errors import EdgekitError


class Completed(object):
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def run_argv(argv: List[str], step: str, timeout: int, capture: bool = True,
             env: Optional[Dict[str, str]] = None, cwd: Optional[str] = None) -> Completed:
    """Run `argv`; a missing program or a timeout is a one-line EdgekitError, a non-zero exit is returned."""
    try:
        proc = subprocess.run(argv, stdout=subprocess.PIPE if capture else None, stderr=subprocess.PIPE,
                              universal_newlines=True, timeout=timeout, env=env, cwd=cwd)
    except FileNotFoundError:
        raise EdgekitError("{}: {} is not installed on this host".format(step, argv[0])) from None
    except subprocess.TimeoutExpired:
        raise EdgekitError("{}: no answer within {} s".format(step, timeout)) from None
    return Completed(proc.returncode, proc.stdout or "", proc.stderr or "")


def checked(proc: Completed, step: str) -> str:
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        raise EdgekitError("{} failed: {}".format(step, lines[-1] if lines else "exit status {}".format(
            proc.returncode)))
    return proc.stdout


def sha_listing(text: str) -> Dict[str, str]:
    """{file: sha256} from `sha256sum` output."""
    found = {}
    for line in text.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and len(parts[0]) == 64:
            found[parts[1].lstrip("*").strip()] = parts[0]
    return found


class Transport(object):
    """A folder (`workdir`) on the machine that measures, and a shell there."""

    label = "here"

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir

    # ---- primitives
    def _command(self, script: str, step: str, timeout: int, capture: bool) -> Completed:
        raise NotImplementedError

    def _send(self, local_paths: Sequence[str], folder: str, step: str) -> None:
        """Copy local files into `folder` (relative to workdir, "" for workdir itself)."""
        raise NotImplementedError

    def _receive(self, names: Sequence[str], destination: str, step: str) -> None:
        """Copy workdir-relative `names` into the local folder `destination`."""
        raise NotImplementedError

    # ---- what the flow uses
    def run(self, script: str, step: str, timeout: int = 60, capture: bool = True, in_workdir: bool = True,
            check: bool = True) -> Completed:
        """`script` in a POSIX shell there (in `workdir`, or the login folder before it exists)."""
        if in_workdir:
            script = "cd {} && {}".format(shlex.quote(self.workdir), script)
        proc = self._command(script, step, timeout, capture)
        if check:
            checked(proc, step)
        return proc

    def put(self, bundle: str, files: Sequence[str], can_hash: bool, log: Callable[[str], None]) -> List[str]:
        """Send the bundle files the device lacks or holds in another version; returns those sent."""
        q = shlex.quote
        subdirs = sorted({os.path.dirname(f) for f in files if os.path.dirname(f)})
        folders = [self.workdir] + ["{}/{}".format(self.workdir, d) for d in subdirs + [layout.RESULTS_DIR,
                                                                                       layout.ENGINES_DIR]]
        self.run("mkdir -p " + " ".join(q(f) for f in folders), "creating {} on {}".format(self.workdir, self.label),
                 in_workdir=False)
        there: Dict[str, str] = {}
        if can_hash:
            there = sha_listing(self.run("sha256sum -- {} 2>/dev/null || true".format(" ".join(q(f) for f in files)),
                                         "listing the bundle on {}".format(self.label), 300).stdout)
        changed = [f for f in files if there.get(f) != sha256_file(os.path.join(bundle, f))]
        if not changed:
            log("[copy] {} already has all {} files".format(self.label, len(files)))
            return []
        log("[copy] {} of {} files -> {}:{}{}".format(
            len(changed), len(files), self.label, self.workdir,
            "" if len(changed) == len(files) else " ({}; the rest are there)".format(", ".join(changed[:4]))))
        for folder in [""] + subdirs:
            batch = [os.path.join(bundle, f) for f in changed if os.path.dirname(f) == folder]
            if batch:
                self._send(batch, folder, "copying the bundle to {}".format(self.label))
        return changed

    def list_results(self) -> List[str]:
        """results/*.json there (results and error files), workdir-relative."""
        out = self.run("ls {} 2>/dev/null || true".format(layout.RESULTS_DIR),
                       "listing the results on {}".format(self.label)).stdout
        return ["{}/{}".format(layout.RESULTS_DIR, n) for n in sorted(out.split()) if n.endswith(".json")]

    def fetch(self, names: Sequence[str], destination: str) -> None:
        os.makedirs(destination, exist_ok=True)
        if names:
            self._receive(names, destination, "fetching the results from {}".format(self.label))

    def clear(self, names: Sequence[str]) -> None:
        """Remove fetched files (and LoadGen log trees) there: the next deploy measures afresh instead of resuming."""
        if names:
            self.run("rm -rf -- " + " ".join(shlex.quote(n) for n in names), "clearing fetched results", 60)


class Local(Transport):
    """This machine: the bundle folder is the device folder (hard links, no copies)."""

    label = "here"

    def _command(self, script: str, step: str, timeout: int, capture: bool) -> Completed:
        return run_argv(["sh", "-c", script], step, timeout, capture)

    def _send(self, local_paths: Sequence[str], folder: str, step: str) -> None:
        target = os.path.join(self.workdir, folder)
        for path in local_paths:
            destination = os.path.join(target, os.path.basename(path))
            if os.path.exists(destination) and os.path.samefile(path, destination):
                continue
            link_or_copy(path, destination)

    def _receive(self, names: Sequence[str], destination: str, step: str) -> None:
        for name in names:
            source, target = os.path.join(self.workdir, name), os.path.join(destination, os.path.basename(name))
            if os.path.isdir(source):  # a LoadGen log tree, a hand-off package
                shutil.rmtree(target, ignore_errors=True)
                shutil.copytree(source, target)
            else:
                shutil.copy2(source, target)


class Ssh(Transport):
    """A device over SSH; `~/.ssh/config` is honoured (plain ssh/scp)."""

    def __init__(self, device: str, workdir: str, port: Optional[int] = None, key: Optional[str] = None,
                 timeout: int = 15, known_hosts: Optional[str] = None) -> None:
        if not device or device.startswith("-") or any(c.isspace() for c in device):
            raise EdgekitError("DEVICE must look like user@host (or a host from ~/.ssh/config), got {!r}".format(
                device))
        if key and not os.path.isfile(key):
            raise EdgekitError("SSH key not found: {}".format(key))
        super().__init__(workdir)
        self.device = self.label = device
        self.port = port
        self.options = ["-o", "BatchMode=yes", "-o", "ConnectTimeout={}".format(timeout),
                        "-o", "StrictHostKeyChecking=accept-new"]
        if key:
            self.options += ["-i", key, "-o", "IdentitiesOnly=yes"]
        if known_hosts:
            self.options += ["-o", "UserKnownHostsFile={}".format(known_hosts)]

    def ssh(self, remote_command: str) -> List[str]:
        port = ["-p", str(self.port)] if self.port else []
        return ["ssh"] + self.options + port + [self.device, remote_command]

    def scp(self, sources: Sequence[str], destination: str) -> List[str]:
        port = ["-P", str(self.port)] if self.port else []
        return ["scp", "-q", "-r"] + self.options + port + list(sources) + [destination]

    def _command(self, script: str, step: str, timeout: int, capture: bool) -> Completed:
        return run_argv(self.ssh(script), step, timeout, capture)

    def _send(self, local_paths: Sequence[str], folder: str, step: str) -> None:
        where = "{}/{}".format(self.workdir, folder).rstrip("/") + "/"
        checked(run_argv(self.scp(local_paths, "{}:{}".format(self.device, where)), step, 3600), step)

    def _receive(self, names: Sequence[str], destination: str, step: str) -> None:
        sources = ["{}:{}/{}".format(self.device, self.workdir, n) for n in names]
        checked(run_argv(self.scp(sources, destination.rstrip("/") + "/"), step, 600), step)


def link_or_copy(source: str, destination: str) -> None:
    """A hard link where the file system allows it (a bundle costs no disk), else a copy."""
    remove_if_exists(destination)
    os.makedirs(os.path.dirname(os.path.abspath(destination)), exist_ok=True)
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)
