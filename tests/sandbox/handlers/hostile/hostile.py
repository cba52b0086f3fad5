"""Hostile handlers: each tries to hurt the host or other functions."""

import contextlib
import ctypes
import errno
import os
import signal
import socket
import time


def fork_bomb(event, context):
    children = 0
    failures = 0
    deadline = time.monotonic() + event.get("seconds", 1.0)
    while time.monotonic() < deadline:
        try:
            pid = os.fork()
        except OSError:
            failures += 1
            continue
        if pid == 0:
            while True:  # every child keeps forking too
                try:
                    os.fork()
                except OSError:
                    time.sleep(0.01)
        children += 1
    return {"children": children, "failures": failures}


def memory_bomb(event, context):
    hog = []
    while True:
        hog.append(bytearray(8 * 1024 * 1024))  # touched: bytearray zero-fills


def one_huge_allocation(event, context):
    return len(bytearray(8 * 1024 * 1024 * 1024))


def spin(event, context):
    while True:
        pass


def ignore_sigterm_and_hang(event, context):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        with contextlib.suppress(BaseException):
            time.sleep(1)


def fill_tmp(event, context):
    written = 0
    block = b"x" * (1 << 20)
    try:
        with open("/tmp/fill", "wb") as f:
            while written < 1 << 34:
                f.write(block)
                f.flush()
                written += len(block)
    except OSError as exc:
        return {"written": written, "errno": exc.errno}
    return {"written": written, "errno": None}


def tmp_marker(event, context):
    path = "/tmp/marker"
    seen = os.path.exists(path)
    with open(path, "w") as f:
        f.write(event.get("tag", ""))
    return {"seen_before": seen}


def write_outside_tmp(event, context):
    results = {}
    for path in ["/var/task/evil.py", "/opt/layer/evil.py", "/evil", "/usr/evil", "/root/evil",
                 "/proc/evil", "/dev/evil", "/opt/meshfaas/bootstrap.py", event.get("host_path", "/x")]:
        try:
            with open(path, "w") as f:
                f.write("pwned")
            results[path] = "written"
        except OSError as exc:
            results[path] = errno.errorcode.get(exc.errno, str(exc.errno))
    return results


def network(event, context):
    out = {"interfaces": sorted(name for _, name in socket.if_nameindex())}
    try:
        with socket.create_connection(("127.0.0.1", event["port"]), timeout=1):
            out["connect"] = "connected"
    except OSError as exc:
        out["connect"] = errno.errorcode.get(exc.errno, str(exc))
    with open("/proc/net/route") as f:
        out["ipv4_routes"] = [line.split()[:2] for line in f.read().splitlines()[1:]]
    try:
        with open("/proc/net/ipv6_route") as f:
            out["ipv6_routes"] = [line.split()[-1] for line in f.read().splitlines()
                                  if line.split()[-1] != "lo"]
    except OSError:
        out["ipv6_routes"] = []
    return out


def read_files(event, context):
    results = {}
    for path in event["paths"]:
        try:
            if os.path.isdir(path):
                results[path] = "dir:" + ",".join(sorted(os.listdir(path)))
            else:
                with open(path, "rb") as f:
                    results[path] = "read:" + f.read(64).decode(errors="replace")
        except OSError as exc:
            results[path] = errno.errorcode.get(exc.errno, str(exc.errno))
    return results


def list_root(event, context):
    return {"/": sorted(os.listdir("/")), "/proc/1/root": sorted(os.listdir("/proc/1/root")),
            "/root": sorted(os.listdir("/root")) if os.path.isdir("/root") else None}


def _libc_call(name, *args):
    libc = ctypes.CDLL(None, use_errno=True)
    ret = getattr(libc, name)(*args)
    return ret, errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))


def privileged(event, context):
    out = {}
    out["ptrace_attach_1"] = _libc_call("ptrace", 16, 1, None, None)
    out["ptrace_traceme"] = _libc_call("ptrace", 0, 0, None, None)
    out["mount_tmpfs"] = _libc_call("mount", b"none", b"/mnt", b"tmpfs", 0, None)
    out["umount_proc"] = _libc_call("umount2", b"/proc", 0)
    out["unshare_user"] = _libc_call("unshare", 0x10000000)
    out["setns"] = _libc_call("setns", 0, 0)
    out["keyctl"] = _libc_call("syscall", 250, 0, 0, 0, 0)
    out["bpf"] = _libc_call("syscall", 321, 0, 0, 0)
    out["chroot"] = _libc_call("chroot", b"/tmp")
    return {key: list(value) for key, value in out.items()}


def signal_outside(event, context):
    out = {}
    for pid in event["pids"]:
        try:
            os.kill(pid, signal.SIGKILL)
            out[str(pid)] = "sent"
        except OSError as exc:
            out[str(pid)] = errno.errorcode.get(exc.errno, str(exc.errno))
    try:
        os.kill(-1, signal.SIGKILL)  # everything we may signal (never the host)
        out["-1"] = "sent"
    except OSError as exc:
        out["-1"] = errno.errorcode.get(exc.errno, str(exc.errno))
    return out


def flood(event, context):
    chunk = "y" * (1 << 20)
    for _ in range(event.get("mb", 100)):
        print(chunk)
    return "flooded"


def forge_frame(event, context):
    import struct
    import sys

    write_fd = int(sys.argv[2])  # the bootstrap's result pipe
    os.write(write_fd, struct.pack(">II", 10, 2**31))  # claims a 2 GiB body
    time.sleep(30)
