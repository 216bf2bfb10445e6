"""Run a command the way systemd would run a unit's ExecStart, without systemd.

What a unit file's sandbox does to a process is mostly a seccomp filter and a user: this
module reads the unit's `[Service]` section and applies, before exec'ing the command,

- `SystemCallFilter=` (sets expanded by `systemd-analyze syscall-filter`, systemd's own
  merge rules: the first positive list is an allow-list that includes `@default`, `~` lines
  take calls out of it, later positive lines put calls back; a call outside it is SIGSYS,
  or `SystemCallErrorNumber=`), native architecture only (`SystemCallArchitectures=native`);
- `RestrictAddressFamilies=` (other socket families: EAFNOSUPPORT) and
  `MemoryDenyWriteExecute=` (W+X mappings and PROT_EXEC mprotect: EPERM), as systemd's
  seccomp rules do;
- `DynamicUser=` (an unprivileged uid and gid, no supplementary groups), `UMask=`,
  `Environment=`, `LoadCredential=` (copied into a directory only that user can read,
  `$CREDENTIALS_DIRECTORY`) and `StateDirectory=` (owned by that user, `StateDirectoryMode=`);
- a private mount namespace in which directories the user could not otherwise traverse on
  the way to the interpreter (a venv under /root) are made traversable.

Paths in the unit (/opt/firehose-mod/venv, /etc/firehose-mod, /var/lib/firehose-mod) are mapped
to the test's with `--map UNIT_PATH=LOCAL_PATH`. libseccomp is used through ctypes (libseccomp2
is part of every Debian system: apt depends on it), so nothing is compiled or pip-installed.

    python tests/test_systemd_sandbox.py --unit systemd/firehose-mod.service --scratch /tmp/x \
        --map /opt/firehose-mod/venv=.venv --map /var/lib/firehose-mod=/tmp/x/state [--env K=V] [-- CMD ARGS]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

UID = GID = 65534  # nobody: stands in for the unit's DynamicUser
KILL_PROCESS, ALLOW = 0x80000000, 0x7FFF0000
CMP_EQ, CMP_GT, CMP_MASKED_EQ = 4, 6, 7
FAMILIES = {"AF_UNIX": 1, "AF_LOCAL": 1, "AF_INET": 2, "AF_INET6": 10, "AF_NETLINK": 16, "AF_PACKET": 17}


def errno_action(errno: int) -> int:
    return 0x00050000 | (errno & 0xFFFF)


def read_unit(path: Path) -> dict[str, list[str]]:
    """The `[Service]` directives of a unit file, each with every value assigned, in order."""
    directives: dict[str, list[str]] = {}
    section = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line:
            key, value = line.split("=", 1)
            directives.setdefault(key.strip(), []).append(value.strip())
    return directives


def syscall_sets() -> dict[str, list[str]]:
    """Every `@set` systemd knows, as listed by `systemd-analyze syscall-filter`."""
    out = subprocess.run(["systemd-analyze", "syscall-filter"], capture_output=True, text=True, check=True).stdout
    sets: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in out.splitlines():
        if line.startswith("@"):
            current = sets.setdefault(line.strip(), [])
        elif line.startswith("    ") and not line.strip().startswith("#") and current is not None:
            current.append(line.strip())
    return sets


def expand(names: list[str], sets: dict[str, list[str]]) -> set[str]:
    out: set[str] = set()
    for name in names:
        out |= expand(sets[name], sets) if name.startswith("@") else {name}
    return out


def allowed_syscalls(filters: list[str], sets: dict[str, list[str]]) -> set[str] | None:
    """The allow-list `SystemCallFilter=` lines build (systemd's merge rules); None: no filter."""
    allowed: set[str] | None = None
    for value in filters:
        invert = value.startswith("~")
        names = value.lstrip("~").split()
        if allowed is None:
            if invert:
                raise ValueError("a deny-list filter (first line starting with ~) is not emulated")
            allowed = expand(["@default"], sets)
        allowed = allowed - expand(names, sets) if invert else allowed | expand(names, sets)
    return allowed


class Seccomp:
    """The few libseccomp calls a filter needs, through ctypes."""

    class Arg(ctypes.Structure):
        _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]

    def __init__(self, default_action: int):
        self.lib = lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_init.argtypes = [ctypes.c_uint32]
        lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                               ctypes.c_void_p]
        lib.seccomp_load.argtypes = [ctypes.c_void_p]
        self.ctx = lib.seccomp_init(default_action)

    def rule(self, action: int, name: str, *args: tuple[int, int, int, int]) -> None:
        nr = self.lib.seccomp_syscall_resolve_name(name.encode())
        if nr < 0:  # not a call of this architecture (arm_fadvise64_64, ...)
            return
        array = (self.Arg * len(args))(*[self.Arg(*a) for a in args]) if args else None
        if (rc := self.lib.seccomp_rule_add_array(self.ctx, action, nr, len(args), array)) != 0:
            raise OSError(-rc, f"seccomp_rule_add({name}): {os.strerror(-rc)}")

    def load(self) -> None:
        if (rc := self.lib.seccomp_load(self.ctx)) != 0:
            raise OSError(-rc, f"seccomp_load: {os.strerror(-rc)}")


def install_filters(unit: dict[str, list[str]]) -> None:
    """Load the unit's seccomp filters into this process (they are inherited across exec).

    The allow-list goes last: `seccomp()` itself is outside @system-service.
    """
    import errno

    if families := unit.get("RestrictAddressFamilies"):
        keep = sorted({FAMILIES[x] for x in " ".join(families).split()})
        f = Seccomp(ALLOW)
        f.rule(errno_action(errno.EAFNOSUPPORT), "socket", (0, CMP_GT, keep[-1], 0))
        for family in set(range(keep[-1])) - set(keep):
            f.rule(errno_action(errno.EAFNOSUPPORT), "socket", (0, CMP_EQ, family, 0))
        f.load()
    if unit.get("MemoryDenyWriteExecute", ["no"])[-1] == "yes":
        prot_write, prot_exec, shm_exec = 2, 4, 0o100000
        f = Seccomp(ALLOW)
        f.rule(errno_action(errno.EPERM), "mmap", (2, CMP_MASKED_EQ, prot_write | prot_exec, prot_write | prot_exec))
        for name in ("mprotect", "pkey_mprotect"):
            f.rule(errno_action(errno.EPERM), name, (2, CMP_MASKED_EQ, prot_exec, prot_exec))
        f.rule(errno_action(errno.EPERM), "shmat", (2, CMP_MASKED_EQ, shm_exec, shm_exec))
        f.load()
    if (allowed := allowed_syscalls(unit.get("SystemCallFilter", []), syscall_sets())) is not None:
        error = unit.get("SystemCallErrorNumber", [None])[-1]
        f = Seccomp(errno_action(getattr(errno, error)) if error else KILL_PROCESS)
        for name in sorted(allowed):
            f.rule(ALLOW, name)
        f.load()


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
    enc = lambda s: s.encode() if s else None  # noqa: E731
    if libc.mount(enc(source), target.encode(), enc(fstype), flags, enc(data)) != 0:
        raise OSError(ctypes.get_errno(), f"mount {target}: {os.strerror(ctypes.get_errno())}")


def private_mounts(reachable: list[Path], scratch: Path) -> None:
    """A private mount namespace where every directory above `reachable` paths can be traversed."""
    ms_bind, ms_rec, ms_private = 4096, 16384, 1 << 18
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x00020000) != 0:  # CLONE_NEWNS
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
    _mount(None, "/", None, ms_rec | ms_private)
    for path in reachable:
        path = path.resolve()
        for above in reversed(path.parents):
            if os.stat(above).st_mode & 0o001:
                continue
            child = above / path.parts[len(above.parts)]
            holder = tempfile.mkdtemp(prefix="sandbox-holder-", dir=scratch)
            _mount(str(child), holder, None, ms_bind | ms_rec)
            _mount("tmpfs", str(above), "tmpfs", 0, "mode=0755")  # hides the rest of `above`
            child.mkdir()
            _mount(holder, str(child), None, ms_bind | ms_rec)


def exec_unit(args: argparse.Namespace) -> None:
    """Set up the unit's sandbox and exec its ExecStart (or `args.command`): never returns."""
    maps = [tuple(m.split("=", 1)) for m in args.map]

    def local(value: str) -> str:
        for unit_path, path in maps:
            value = value.replace(unit_path, path)
        return value

    unit = {k: [local(v) for v in vs] for k, vs in read_unit(Path(args.unit)).items()}
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    for assignment in " ".join(unit.get("Environment", [])).split():
        env.update([assignment.split("=", 1)])
    states = []
    for name in unit.get("StateDirectory", []):
        state = Path(local(f"/var/lib/{name}"))
        state.mkdir(parents=True, exist_ok=True)
        os.chown(state, UID, GID)
        state.chmod(int(unit.get("StateDirectoryMode", ["0755"])[-1], 8))
        states.append(state)
    reachable = [Path(sys.base_prefix), Path(sys.prefix), Path(__file__).parent.parent, *states]
    if credentials := unit.get("LoadCredential"):
        creds = Path(tempfile.mkdtemp(prefix="sandbox-credentials-", dir=args.scratch))
        for cred in credentials:
            name, source = cred.split(":", 1)
            shutil.copyfile(source, creds / name)  # as root, like systemd: the source may be 0600 root
            os.chown(creds / name, UID, GID)
            (creds / name).chmod(0o400)
        os.chown(creds, UID, GID)
        creds.chmod(0o500)
        env["CREDENTIALS_DIRECTORY"] = str(creds)
        reachable.append(creds)
    env.update(e.split("=", 1) for e in args.env)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    command = command or unit["ExecStart"][-1].split()
    private_mounts(reachable, Path(args.scratch))
    os.chdir("/")
    os.umask(int(unit.get("UMask", ["0022"])[-1], 8))
    if unit.get("DynamicUser", ["no"])[-1] == "yes":
        os.setgroups([])
        os.setresgid(GID, GID, GID)
        os.setresuid(UID, UID, UID)
    install_filters(unit)  # libseccomp sets no_new_privs first, as NoNewPrivileges=yes does
    os.execve(command[0], command, env)


def sandbox_command(unit: Path, maps: dict[str, Path], env: dict[str, str], command: list[str] = (), *,
                    scratch: Path) -> list[str]:
    """The argv that runs `command` (default: the unit's ExecStart) in the unit's sandbox.

    `scratch` holds the credentials and mount points: a directory the unit's user can reach, as
    /tmp/x with mode 0755 (the test removes it; the mounts vanish with the sandbox's namespace).
    """
    argv = [sys.executable, __file__, "--unit", str(unit), "--scratch", str(scratch)]
    argv += [x for unit_path, path in maps.items() for x in ("--map", f"{unit_path}={path}")]
    argv += [x for k, v in env.items() for x in ("--env", f"{k}={v}")]
    return [*argv, "--", *command]


def sandbox_unavailable() -> str | None:
    """Why this machine cannot emulate a unit's sandbox, or None."""
    if os.geteuid() != 0:
        return "the sandbox emulation needs root (to mount, change user and load seccomp filters); CI runs as root"
    if shutil.which("systemd-analyze") is None:
        return "systemd-analyze is not installed (Debian: apt-get install systemd); it lists the syscall sets"
    try:
        ctypes.CDLL("libseccomp.so.2")
    except OSError:
        return "libseccomp.so.2 is not installed (Debian: apt-get install libseccomp2)"
    return None


needs_sandbox = pytest.mark.skipif(sandbox_unavailable() is not None, reason=sandbox_unavailable() or "")


@needs_sandbox
@pytest.mark.parametrize(("unit_filter", "killed"), [("~@resources", True), ("mbind", False)])
def test_a_call_outside_the_filter_is_sigsys(tmp_path, unit_filter, killed):
    unit = tmp_path / "probe.service"
    unit.write_text(f"[Service]\nDynamicUser=yes\nSystemCallFilter=@system-service\nSystemCallFilter={unit_filter}\n")
    probe = "import os; os.sched_setaffinity(0, os.sched_getaffinity(0)); print(os.getuid())"
    command = sandbox_command(unit, {}, {}, [sys.executable, "-c", probe], scratch=tmp_path)
    proc = subprocess.run(command, capture_output=True, text=True)
    if killed:
        assert proc.returncode == -signal.SIGSYS, proc.stderr
    else:
        assert (proc.returncode, proc.stdout.strip()) == (0, str(UID)), proc.stderr


def test_filter_lines_merge_as_systemd_merges_them():
    sets = {"@default": ["exit"], "@system-service": ["@default", "@resources", "read"],
            "@resources": ["mbind", "nice"]}
    assert allowed_syscalls(["@system-service", "~@resources", "mbind"], sets) == {"exit", "read", "mbind"}
    assert allowed_syscalls(["read"], sets) == {"exit", "read"}  # @default is always in an allow-list
    assert allowed_syscalls([], sets) is None


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--unit", required=True)
    parser.add_argument("--scratch", required=True, help="a directory for credentials and mount points")
    parser.add_argument("--map", action="append", default=[], metavar="UNIT_PATH=LOCAL_PATH")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    exec_unit(parser.parse_args())
