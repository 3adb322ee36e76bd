"""Where the time goes during a benchmark: CPU seconds of the data-plane workers and of the whole
machine, and optional py-spy profiles of the workers (``pip install py-spy``)."""

from __future__ import annotations

import collections
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PY_SPY_RATE = 250  # samples per second


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (the worker processes of a data plane)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def process_cpu(pid: int) -> float:
    """User + system CPU seconds used by ``pid`` so far (0.0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_cpu() -> list[int]:
    """The cpu line of /proc/stat: user nice system idle iowait irq softirq ... (ticks)."""
    return [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]


@dataclass(frozen=True, slots=True)
class CpuReport:
    seconds: float
    workers: dict[str, float]  # name -> share of one core, 0..1
    machine: dict[str, float]  # user/system/softirq/idle as share of all cores, 0..1

    def lines(self) -> list[str]:
        out = [f"  {name}: {share * 100:.0f}% of a core" for name, share in self.workers.items()]
        parts = ", ".join(f"{k} {v * 100:.0f}%" for k, v in self.machine.items())
        out.append(f"  machine ({os.cpu_count()} cores): {parts}")
        return out


class CpuMeter:
    """Measures CPU use of named processes and of the machine between start() and stop()."""

    def __init__(self, processes: dict[str, int]) -> None:
        self.processes = processes

    def start(self) -> None:
        self._before = {name: process_cpu(pid) for name, pid in self.processes.items()}
        self._machine = machine_cpu()
        self._t0 = os.times().elapsed

    def stop(self) -> CpuReport:
        elapsed = max(os.times().elapsed - self._t0, 1e-6)
        workers = {
            name: (process_cpu(pid) - self._before[name]) / elapsed for name, pid in self.processes.items()
        }
        delta = [b - a for a, b in zip(self._machine, machine_cpu(), strict=False)]
        total = max(sum(delta), 1)
        names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq")
        machine = {
            name: delta[i] / total
            for i, name in enumerate(names)
            if name in ("user", "system", "softirq", "idle")
        }
        return CpuReport(seconds=elapsed, workers=workers, machine=machine)


class Profiler:
    """py-spy ``record`` of several processes at once, summarised per function."""

    def __init__(self, processes: dict[str, int], directory: Path, seconds: float) -> None:
        self.binary = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        self.directory = directory
        self.runs: list[tuple[str, Path, subprocess.Popen[bytes]]] = []
        directory.mkdir(parents=True, exist_ok=True)
        for name, pid in processes.items():
            out = directory / f"{name}.txt"
            argv = [self.binary, "record", "-p", str(pid), "-d", str(int(seconds)), "-r", str(PY_SPY_RATE)]
            argv += ["-f", "raw", "-o", str(out), "--nonblocking"]
            process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.runs.append((name, out, process))

    def summary(self, top: int = 12) -> list[str]:
        lines = []
        for name, out, process in self.runs:
            process.wait()
            if not out.exists():
                lines.append(f"  {name}: no profile (py-spy failed)")
                continue
            own: collections.Counter[str] = collections.Counter()
            total = 0
            for line in out.read_text().splitlines():
                stack, _, count = line.rpartition(" ")
                total += int(count)
                own[stack.split(";")[-1]] += int(count)
            lines.append(f"  {name}: {total} samples, self time by function ({out})")
            lines += [f"    {100 * n / max(total, 1):5.1f}%  {frame}" for frame, n in own.most_common(top)]
        return lines


def available() -> bool:
    return Path(sys.executable).with_name("py-spy").exists() or shutil.which("py-spy") is not None
