"""The malloc mmap threshold (generation.runtime.allocator): with it, a KV
block freed after an earlier larger one had raised glibc's dynamic
threshold still goes back to the system; without it, it stays in the
process's RSS. Each case runs in a fresh interpreter: the threshold is
process-wide and glibc's dynamic state depends on what was freed before."""

import platform
import subprocess
import sys

import pytest

from generation.runtime.allocator import set_mmap_threshold

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only"
)

SCRIPT = """
import sys
import torch
from generation.runtime.allocator import set_mmap_threshold

def rss_anon_mb():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024

assert set_mmap_threshold(int(sys.argv[1])) == (int(sys.argv[1]) > 0)
big = torch.ones(30 * 2**20 // 4)  # a 30 MB block, mapped; its free raises glibc's threshold
del big
before = rss_anon_mb()
block = torch.ones(20 * 2**20 // 4)  # a 20 MB sequence block, every page touched
del block
print(round(rss_anon_mb() - before, 1))
"""


def kept_after_free_mb(threshold: int) -> float:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(threshold)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return float(result.stdout.split()[-1])


def test_a_freed_block_goes_back_to_the_system_with_the_threshold():
    assert kept_after_free_mb(1024 * 1024) < 2
    assert kept_after_free_mb(0) > 15  # glibc's default keeps it: what the setting is for


def test_values_glibc_would_refuse_are_not_set():
    assert not set_mmap_threshold(0)
    assert not set_mmap_threshold(64 * 2**20)
