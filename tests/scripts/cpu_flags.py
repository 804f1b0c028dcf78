"""Prints what ``cpu.use_host_cores(2)`` returns and the XLA_FLAGS it leaves."""

import os

from lstm_jax._process import cpu

print(cpu.use_host_cores(2))
print(os.environ["XLA_FLAGS"])
