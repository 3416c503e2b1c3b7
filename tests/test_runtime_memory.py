import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from starfish_cli.runtime import memory

VM_STAT = """Mach Virtual Memory Statistics: (page size of 16384 bytes)
Pages free:                               10000.
Pages active:                            400000.
Pages inactive:                           30000.
Pages speculative:                         5000.
Pages wired down:                        100000.
"""


def test_linux_reads_memavailable_not_memfree(tmp_path, monkeypatch):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000000 kB\nMemFree:         1000000 kB\nMemAvailable:    9000000 kB\n")
    monkeypatch.setattr(memory, "MEMINFO", meminfo)
    assert memory.available_host_bytes() == 9000000 * 1024


def test_macos_counts_free_and_inactive_pages_of_vm_stat(monkeypatch):
    assert memory.vm_stat_available(VM_STAT) == (10000 + 30000) * 16384
    assert memory.vm_stat_available("no such output") is None
    # a host without /proc/meminfo (macOS) asks vm_stat instead of answering 0, which refused every cache
    monkeypatch.setattr(memory, "MEMINFO", Path("/nonexistent/meminfo"))
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0, stdout=VM_STAT))
    assert memory.available_host_bytes() == (10000 + 30000) * 16384


def test_without_meminfo_or_vm_stat_posix_sysconf_answers(monkeypatch):
    monkeypatch.setattr(memory, "MEMINFO", Path("/nonexistent/meminfo"))
    monkeypatch.setattr(sys, "platform", "freebsd14")
    if "SC_AVPHYS_PAGES" not in getattr(os, "sysconf_names", {}):
        pytest.skip("this system's sysconf has no SC_AVPHYS_PAGES")
    assert memory.available_host_bytes() > 0
    monkeypatch.setattr(memory, "_sysconf_available", lambda: None)
    assert memory.available_host_bytes() == 0  # nothing answers: 0, so callers refuse rather than guess


def test_peak_rss_follows_an_allocation_and_its_fallback_is_in_bytes(monkeypatch):
    import gc
    import mmap

    # an earlier test in this worker (a run in process) may leave garbage that, collected between the reset
    # and the allocation, would lower the resident size by more than the allocation raises it
    gc.collect()
    memory.reset_peak_rss()
    before = memory.peak_rss_bytes()
    block = mmap.mmap(-1, 64 * 2**20)  # 64 MiB of pages new to the process, not ones malloc kept: touched
    for offset in range(0, len(block), mmap.PAGESIZE):
        block[offset] = 1
    assert memory.peak_rss_bytes() >= before + 48 * 2**20
    block.close()
    # getrusage's ru_maxrss (kilobytes on Linux, bytes on macOS) where /proc/self/status is missing
    monkeypatch.setattr(memory, "PROCESS_STATUS", Path("/nonexistent/status"))
    assert 64 * 2**20 < memory.peak_rss_bytes() < 2**40


def test_a_stage_records_the_process_peak_rss_during_it():
    from starfish_cli.runtime.device import measure

    into = {}
    with measure("eval", torch.device("cpu"), into):
        block = torch.ones(64 * 2**20 // 4)
        del block
    entry = into["eval"]
    assert entry["peak_rss_mb"] == entry["peak_memory_mb"] and entry["memory_kind"].startswith("host RSS")
    assert entry["peak_rss_mb"] >= 64


def test_large_frees_go_back_to_the_os_unless_the_user_chose_a_threshold(monkeypatch):
    from starfish_cli.runtime import memory

    calls = []

    class Libc:
        def mallopt(self, parameter, value):
            calls.append((parameter, value))
            return 1

    monkeypatch.setattr(memory, "_libc", Libc)
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert memory.return_large_frees() and calls == [(memory.M_MMAP_THRESHOLD, 16 * 2**20)]
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1048576")
    assert not memory.return_large_frees() and len(calls) == 1
    monkeypatch.setattr(memory, "_libc", lambda: None)  # not glibc (macOS, musl): nothing to set
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    assert not memory.return_large_frees()
