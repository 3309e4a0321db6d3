"""Test-only fault injection for sweeps (loaded with ``-p fault_plugin``; never shipped).

Registers the workload ``hjepa_faults``: the real hjepa workload, except that a
config whose batch size is listed in ``HJEPA_BENCH_TEST_FAULTS`` (JSON, e.g.
``{"3": "oom", "4": "crash", "5": "hang", "6": "nan"}``) fails at its second step:

* ``oom``   - asks the CPU allocator for 4 EiB (the backend's real OOM error)
* ``crash`` - the process kills itself with SIGSEGV
* ``hang``  - sleeps far past any timeout
* ``nan``   - feeds NaN images to the real step (the loss diverges)
* ``kill_parent`` - SIGKILLs the process that started the config's child (a Ray executor's worker
  process: the worker dies mid-config), then waits to be stopped
* ``slow``  - sleeps 6 s, then steps on (a config that is still running a while after it started)
* ``printed_oom_crash`` / ``printed_oom_continue`` - writes to file descriptor 2 what Metal prints when
  it aborts a command buffer for lack of memory (MPS prints it, raises nothing), then dies by SIGABRT,
  or steps on as if nothing happened

and the backends ``fakemps`` (the CPU, with the MPS backend's printed out-of-memory markers) and
``fakecuda`` (the CPU, whose precision probe leaves memory behind in the process that runs it, as a
CUDA context and cached blocks do: ``DEVICE_MEMORY_HELD`` lists what each probe kept).
"""
from __future__ import annotations

import json
import os
import signal
import time

import torch

from hjepa_bench import hookimpl
from hjepa_bench.builtin.backend_cpu import CPUBackend
from hjepa_bench.builtin.backend_mps import MPSBackend
from hjepa_bench.builtin.workload_hjepa import HJEPAWorkload, PreparedHJEPA

# What torch's MPS backend leaves on stderr when Metal runs out of memory inside a command buffer.
METAL_OOM_TEXT = (b"Error: command buffer exited with error status.\n\tThe Metal Performance Shaders operations "
                  b"encoded on it may not have completed.\n\tError: \n\t(null)\n\tInsufficient Memory "
                  b"(00000008:kIOGPUCommandBufferCallbackErrorOutOfMemory)\n")


class FaultyPrepared(PreparedHJEPA):
    def __init__(self, config, backend, fault):
        super().__init__(config, backend)
        self.fault = fault
        self.steps = 0

    def step(self, batch):
        self.steps += 1
        if self.steps >= 2:
            if self.fault == "oom":
                torch.empty(2**62, dtype=torch.uint8)
            elif self.fault == "crash":
                os.kill(os.getpid(), signal.SIGSEGV)
            elif self.fault == "hang":
                time.sleep(3600)
            elif self.fault == "kill_parent":
                os.kill(os.getppid(), signal.SIGKILL)
                time.sleep(3600)
            elif self.fault == "slow" and self.steps == 2:
                time.sleep(6)
            elif self.fault in ("printed_oom_crash", "printed_oom_continue") and self.steps == 2:
                os.write(2, METAL_OOM_TEXT)
                if self.fault == "printed_oom_crash":
                    os.kill(os.getpid(), signal.SIGABRT)
            elif self.fault == "nan":
                batch = (batch[0] * float("nan"), *batch[1:])
        return super().step(batch)


class FaultyWorkload(HJEPAWorkload):
    name = "hjepa_faults"

    def prepare(self, config, backend):
        faults = json.loads(os.environ.get("HJEPA_BENCH_TEST_FAULTS", "{}"))
        return FaultyPrepared(config, backend, faults.get(str(config["data"]["batch_size"])))


@hookimpl
def hjepa_bench_register_workloads(register):
    register(FaultyWorkload())


class FakeMPS(CPUBackend):
    """The CPU, with the MPS backend's printed (not raised) out-of-memory markers."""

    name = "fakemps"
    printed_oom_markers = MPSBackend.printed_oom_markers


DEVICE_MEMORY_HELD: list[torch.Tensor] = []


class FakeCUDA(CPUBackend):
    """The CPU, whose precision probe keeps memory in the probing process for good, as CUDA's does."""

    name = "fakecuda"
    probes_hold_device = True

    def precision_reason(self, precision):
        DEVICE_MEMORY_HELD.append(torch.empty(2**20, dtype=torch.uint8))  # a context that stays
        return "" if precision != "fp16" else "fp16 is not offered by this fake"


@hookimpl
def hjepa_bench_register_backends(register):
    register(FakeMPS())
    register(FakeCUDA())
