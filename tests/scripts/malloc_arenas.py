"""Eight threads allocate at once; prints how many malloc heaps glibc then reports.

python malloc_arenas.py USE_HOST_CORES   (True: call cpu.use_host_cores(2) first)
"""

import ctypes
import sys
import tempfile
import threading

from lstm_jax._process import cpu

if sys.argv[1] == "True":
    cpu.limit_malloc_arenas()
libc = ctypes.CDLL(None)
libc.malloc.restype = libc.fopen.restype = ctypes.c_void_p
libc.free.argtypes = libc.fclose.argtypes = [ctypes.c_void_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
together = threading.Barrier(8)


def allocate():
    together.wait()
    for block in [libc.malloc(1024) for _ in range(2000)]:
        libc.free(block)


threads = [threading.Thread(target=allocate) for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
with tempfile.NamedTemporaryFile("r") as f:
    fp = libc.fopen(f.name.encode(), b"w")
    libc.malloc_info(0, fp)
    libc.fclose(fp)
    print(f.read().count("<heap nr="))
