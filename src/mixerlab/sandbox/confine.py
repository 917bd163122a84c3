"""OS-level confinement of the sandbox worker, below Python: what holds even if candidate code escapes the
audit hook (a torch C++ function that writes a file, a library that opens a socket, a bug in our rules).

Linux only, applied to the worker between fork and exec (`Confinement.apply`, from `run_sandboxed`'s
preexec), so every thread and every process the worker starts is confined from its first instruction:

- **Landlock** (kernel >= 5.13, unprivileged): file writes, deletions and creations only inside the
  scratch directory (and writes to the device files CUDA and Python need, /dev/null and /dev/nvidia*, and to
  the worker's own /proc/<pid>, which the CUDA driver writes to);
  programs may be executed only from the system and Python installation folders, never from scratch;
  from ABI 4 no TCP bind or connect; from ABI 6 no signals to, and no abstract UNIX sockets of, processes
  outside the sandbox. A Landlock domain also denies ptrace of processes outside it.
- **seccomp** (unprivileged, with no_new_privs): `socket()` of any family but AF_UNIX fails with EACCES,
  and ptrace, process_vm_readv/writev, mount, setns, bpf, perf_event_open, keyctl, io_uring and
  userfaultfd fail with EPERM.
- **A network namespace** where the process may create one (root): no interface but a down loopback.

Reads stay allowed (Python, torch and the CUDA driver read their own files). Where a mechanism is
missing (an old kernel, Landlock disabled, not Linux), the others still apply and `Confinement.summary()`
says what was not; the audit hook (worker.py) always runs on top. docs/candidates.md lists the layers.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

# Landlock (include/uapi/linux/landlock.h); the syscall numbers are the same on x86-64 and arm64
SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1
FS_EXECUTE, FS_WRITE_FILE = 1 << 0, 1 << 1
FS_REMOVE_DIR, FS_REMOVE_FILE, FS_MAKE_CHAR, FS_MAKE_DIR, FS_MAKE_REG = 1 << 4, 1 << 5, 1 << 6, 1 << 7, 1 << 8
FS_MAKE_SOCK, FS_MAKE_FIFO, FS_MAKE_BLOCK, FS_MAKE_SYM = 1 << 9, 1 << 10, 1 << 11, 1 << 12
FS_REFER, FS_TRUNCATE = 1 << 13, 1 << 14  # ABI 2, ABI 3
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1  # ABI 4
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1  # ABI 6

PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
CLONE_NEWNET = 0x40000000
SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO = 0x7FFF0000, 0x00050000
AF_UNIX = 1

# syscall numbers the filter refuses, per architecture: (audit arch, socket, [refused with EPERM])
_SYSCALLS = {
    "x86_64": (0xC000003E, 41, [101, 310, 311, 165, 166, 308, 321, 298, 250, 248, 249, 425, 426, 427, 323]),
    "aarch64": (0xC00000B7, 198, [117, 270, 271, 40, 39, 268, 280, 241, 219, 217, 218, 425, 426, 427, 282]),
}

# where programs may be executed from (the worker runs ldconfig, and Triton its ptxas and a C compiler)
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/opt", "/etc/alternatives")
_DEVICE_FILES = ("/dev/null", "/dev/full", "/dev/tty")


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 where Landlock is missing or disabled (or not Linux)."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        version = _libc().syscall(SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), LANDLOCK_CREATE_RULESET_VERSION)
    except (AttributeError, OSError):
        return 0
    return max(0, int(version))


def _write_rights(abi: int) -> int:
    rights = (FS_WRITE_FILE | FS_REMOVE_DIR | FS_REMOVE_FILE | FS_MAKE_CHAR | FS_MAKE_DIR | FS_MAKE_REG
              | FS_MAKE_SOCK | FS_MAKE_FIFO | FS_MAKE_BLOCK | FS_MAKE_SYM)
    if abi >= 2:
        rights |= FS_REFER
    if abi >= 3:
        rights |= FS_TRUNCATE
    return rights


def _executable_dirs(scratch: Path) -> list[str]:
    """System and Python folders (the interpreter, its prefixes, every import path), none containing scratch."""
    candidates = [*_SYSTEM_DIRS, sys.prefix, sys.base_prefix, sys.exec_prefix,
                  str(Path(sys.executable).resolve().parent), *[p for p in sys.path if p]]
    scratch = scratch.resolve()
    found: list[str] = []
    for entry in candidates:
        try:
            path = Path(entry).resolve()
        except OSError:
            continue
        if not path.is_dir() or path == Path("/") or scratch.is_relative_to(path):
            continue  # "/" or "/tmp" would let the candidate run what it writes into scratch
        if str(path) not in found:
            found.append(str(path))
    return found


def _device_files() -> list[str]:
    files = [f for f in _DEVICE_FILES if os.path.exists(f)]
    try:
        files += sorted(str(p) for p in Path("/dev").glob("nvidia*") if not p.is_dir())
    except OSError:
        pass
    return files


def _seccomp_program() -> bytes | None:
    """A classic-BPF seccomp filter (struct sock_filter[]) for this architecture, or None if unknown."""
    arch = platform.machine()
    if arch not in _SYSCALLS:
        return None
    audit_arch, socket_nr, denied = _SYSCALLS[arch]
    LD_W_ABS, JEQ_K, RET_K = 0x20, 0x15, 0x06

    def ins(code: int, jt: int, jf: int, k: int) -> bytes:
        return struct.pack("HBBI", code, jt, jf, k)

    deny = SECCOMP_RET_ERRNO | errno.EPERM
    refuse_socket = SECCOMP_RET_ERRNO | errno.EACCES
    prog = [ins(LD_W_ABS, 0, 0, 4), ins(JEQ_K, 1, 0, audit_arch), ins(RET_K, 0, 0, SECCOMP_RET_ALLOW),
            ins(LD_W_ABS, 0, 0, 0)]
    for nr in denied:
        prog += [ins(JEQ_K, 0, 1, nr), ins(RET_K, 0, 0, deny)]
    # socket(family, ...): AF_UNIX only (args[0] is at offset 16 in struct seccomp_data)
    prog += [ins(JEQ_K, 0, 3, socket_nr), ins(LD_W_ABS, 0, 0, 16), ins(JEQ_K, 1, 0, AF_UNIX),
             ins(RET_K, 0, 0, refuse_socket), ins(RET_K, 0, 0, SECCOMP_RET_ALLOW)]
    return b"".join(prog)


@dataclass
class Confinement:
    """What `apply` will put in place for one worker; built in the parent, applied in the child."""

    scratch: Path
    landlock: int = 0  # ABI version used (0: none)
    ruleset_fd: int | None = None
    seccomp: bytes | None = None
    network_namespace: bool = False
    failures: list[str] = field(default_factory=list)

    @classmethod
    def prepare(cls, scratch: Path, isolate_network: bool = True, use_landlock: bool = True,
                use_seccomp: bool = True) -> "Confinement":
        conf = cls(scratch=Path(scratch))
        if not sys.platform.startswith("linux"):
            conf.failures.append("not Linux: only the audit hook confines the worker")
            return conf
        conf.network_namespace = isolate_network and os.geteuid() == 0
        conf.seccomp = _seccomp_program() if use_seccomp else None
        if use_seccomp and conf.seccomp is None:
            conf.failures.append(f"no seccomp filter for {platform.machine()}")
        abi = landlock_abi() if use_landlock else 0
        if use_landlock and not abi:
            conf.failures.append("Landlock is not available (kernel < 5.13 or disabled): file writes are held by "
                                 "the audit hook alone")
        if abi:
            try:
                conf.ruleset_fd = conf._landlock_ruleset(abi)
                conf.landlock = abi
            except OSError as err:
                conf.failures.append(f"Landlock ruleset failed: {err}")
        return conf

    def _landlock_ruleset(self, abi: int) -> int:
        libc = _libc()
        writes = _write_rights(abi)
        handled_net = NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0
        scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0
        attr = struct.pack("QQQ", writes | FS_EXECUTE, handled_net, scoped)
        size = 24 if abi >= 6 else 16 if abi >= 4 else 8
        fd = libc.syscall(SYS_LANDLOCK_CREATE_RULESET, ctypes.c_char_p(attr[:size]), ctypes.c_size_t(size), 0)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "landlock_create_ruleset")
        file_rights = FS_WRITE_FILE | (FS_TRUNCATE if abi >= 3 else 0)
        rules = [(str(self.scratch), writes)]
        rules += [(path, file_rights) for path in _device_files()]
        rules += [(path, FS_EXECUTE) for path in _executable_dirs(self.scratch)]
        for path, rights in rules:
            try:
                target = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                rule = struct.pack("=Qi", rights, target)
                if libc.syscall(SYS_LANDLOCK_ADD_RULE, fd, LANDLOCK_RULE_PATH_BENEATH, ctypes.c_char_p(rule), 0) < 0:
                    err = ctypes.get_errno()
                    os.close(fd)
                    raise OSError(err, f"landlock_add_rule {path}")
            finally:
                os.close(target)
        return fd

    def apply(self) -> None:
        """In the child, before exec: nothing here may allocate much or take locks (it runs after fork)."""
        libc = _libc()
        if self.network_namespace and libc.unshare(CLONE_NEWNET) != 0:
            pass  # the seccomp filter and Landlock still refuse the network
        if self.ruleset_fd is None and self.seccomp is None:
            return
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
        if self.ruleset_fd is not None:
            self._allow_own_proc(libc)
            if libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, self.ruleset_fd, 0) != 0:
                raise OSError(ctypes.get_errno(), "landlock_restrict_self")
        if self.seccomp is not None:
            filters = ctypes.create_string_buffer(self.seccomp, len(self.seccomp))
            prog = struct.pack("HxxxxxxP", len(self.seccomp) // 8, ctypes.addressof(filters))
            if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.c_char_p(prog), 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")

    def _allow_own_proc(self, libc: ctypes.CDLL) -> None:
        """The CUDA driver writes to files of its own process in /proc (without it cudaGetDeviceCount fails with
        error 304): allow the worker's /proc/<pid>, which only the child can name, and nothing else of /proc."""
        try:
            target = os.open("/proc/self", os.O_PATH | os.O_CLOEXEC)
        except OSError:
            return
        rule = struct.pack("=Qi", FS_WRITE_FILE | (FS_TRUNCATE if self.landlock >= 3 else 0), target)
        libc.syscall(SYS_LANDLOCK_ADD_RULE, self.ruleset_fd, LANDLOCK_RULE_PATH_BENEATH, ctypes.c_char_p(rule), 0)
        os.close(target)

    def close(self) -> None:
        """In the parent, once the worker started: the ruleset lives on in the worker."""
        if self.ruleset_fd is not None:
            os.close(self.ruleset_fd)
            self.ruleset_fd = None

    def summary(self) -> dict[str, object]:
        """What confines the worker, as recorded with every sandbox outcome."""
        return {"landlock_abi": self.landlock, "seccomp": self.seccomp is not None,
                "network_namespace": self.network_namespace, "missing": list(self.failures)}
