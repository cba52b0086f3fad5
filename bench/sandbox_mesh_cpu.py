"""CPU the sandboxes spend per invocation inside a loaded 3-node mesh.

    .venv/bin/python bench/sandbox_mesh_cpu.py [--seconds 10]

Starts a 3-node mesh of real node processes (nsjail sandboxes, 16 slots
each, as bench/mesh_bench.py does), deploys the trivial echo handler, warms
it with 3 s of load, then runs the throughput load (2 client processes x 16
trio clients) for ``--seconds`` and reads the CPU time of every nsjail
process and of every jailed interpreter (the nsjail children) before and
after, from /proc/<pid>/schedstat (ns) and /proc/<pid>/stat (clock ticks).
Prints the CPU per invocation of each. Sandboxes started or ended during the
measured run are left out of the sums (their count is printed).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests" / "mesh"))

import mesh_bench as mb  # noqa: E402

TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def _proc(pid: str) -> tuple[str, int, int, int] | None:
    """(command, parent pid, CPU in clock ticks, CPU in ns) of a process, or None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        sched_ns = int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
    except (OSError, ValueError):
        return None
    comm = stat[stat.index("(") + 1: stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2:].split()
    return comm, int(fields[1]), int(fields[11]) + int(fields[12]), sched_ns


def sandbox_cpu() -> dict[int, tuple[str, int, int]]:
    """pid -> ("nsjail" | "jailed", CPU ticks, CPU ns) for every sandbox process on the host."""
    procs = {int(p): info for p in os.listdir("/proc") if p.isdigit() and (info := _proc(p))}
    nsjails = {pid for pid, info in procs.items() if info[0] == "nsjail"}
    out = {pid: ("nsjail", procs[pid][2], procs[pid][3]) for pid in nsjails}
    out.update({pid: ("jailed", info[2], info[3]) for pid, info in procs.items() if info[1] in nsjails})
    return out


def per_invocation(before: dict[int, tuple[str, int, int]], after: dict[int, tuple[str, int, int]],
                   kind: str, invocations: float) -> tuple[float, float]:
    """(us per invocation from schedstat, from stat ticks) for the processes alive throughout."""
    pids = [p for p in before if p in after and before[p][0] == kind]
    ns = sum(after[p][2] - before[p][2] for p in pids)
    ticks = sum(after[p][1] - before[p][1] for p in pids)
    return ns / invocations / 1e3, ticks / TICKS_PER_S / invocations * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        mesh = mb.start_mesh(Path(tmp), capacities=(16, 16, 16))
        try:
            with mesh.client("n1") as client:
                client.deploy("echo", str(mb.ECHO), handler="app.handler")
                for _ in range(50):
                    mb.invoke_detail(client, "echo", b"{}")
            mb.load(mesh, procs=2, conc=16, seconds=3.0)
            before = sandbox_cpu()
            rate, failed, _ = mb.load(mesh, procs=2, conc=16, seconds=args.seconds)
            after = sandbox_cpu()
        finally:
            mesh.stop()
    invocations = rate * args.seconds
    jailed = per_invocation(before, after, "jailed", invocations)
    nsjail = per_invocation(before, after, "nsjail", invocations)
    changed = len(set(before) ^ set(after))
    print(f"{os.getloadavg()[0]:.1f} load; {rate:,.0f} invocations/s, {failed} failed; "
          f"{sum(1 for v in before.values() if v[0] == 'jailed')} jailed interpreters "
          f"({changed} sandbox processes started or ended during the run)")
    print(f"CPU per invocation: jailed interpreters {jailed[0]:.1f} us (schedstat; {jailed[1]:.1f} us "
          f"from stat ticks), nsjail supervisors {nsjail[0]:.2f} us")


if __name__ == "__main__":
    main()
