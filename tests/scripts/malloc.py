"""Threads allocate after ``cpu.tune_malloc(DEVICES)`` (or without it); prints how many
malloc heaps glibc then reports, the page faults of a thread's second 100 MB block,
allocated and written after it freed the first (as XLA's threads allocate each step's
buffers), and the pages of the block.

python malloc.py DEVICES   (0: glibc's defaults)
"""

import ctypes
import resource
import sys
import tempfile
import threading

from lstm_jax._process import cpu

if int(sys.argv[1]) > 0:
    cpu.tune_malloc(int(sys.argv[1]))
libc = ctypes.CDLL(None)
libc.malloc.restype = libc.fopen.restype = ctypes.c_void_p
libc.free.argtypes = libc.fclose.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
together = threading.Barrier(8)
BLOCK = 100 << 20
faults = []


def allocate():
    together.wait()
    for block in [libc.malloc(1024) for _ in range(2000)]:
        libc.free(block)


def a_large_block_twice():
    for _ in range(2):
        before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        block = libc.malloc(BLOCK)
        libc.memset(block, 1, BLOCK)
        libc.free(block)
        faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)


threads = [threading.Thread(target=allocate) for _ in range(8)]
threads.append(threading.Thread(target=a_large_block_twice))
for t in threads:
    t.start()
for t in threads:
    t.join()
with tempfile.NamedTemporaryFile("r") as f:
    fp = libc.fopen(f.name.encode(), b"w")
    libc.malloc_info(0, fp)
    libc.fclose(fp)
    print(f.read().count("<heap nr="), faults[1], BLOCK // resource.getpagesize())
