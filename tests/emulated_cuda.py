"""The emulated-CUDA test library (csrc/emulated/): the real CUDA kernel sources compiled with
the host compiler against the SIMT emulator, under AddressSanitizer and UndefinedBehaviorSanitizer.

ASan must be the first library in the process, so these tests run in a child pytest started
with LD_PRELOAD (test_emulator.py::test_emulated_cuda_suite_under_sanitizers); the parent
process deselects them (conftest.py). `python tests/emulated_cuda.py [pytest args]` runs that
child by hand.
"""
import functools
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "csrc/emulated").glob("*.cpp"))
SANITIZERS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"]
# Set in the child process: the sanitizer runtime is loaded and the library may be built.
ENV_FLAG = "FASTGAT_EMULATED_CUDA"


def active() -> bool:
    return os.environ.get(ENV_FLAG) == "1"


def sanitizer_env() -> dict:
    """The environment of a process that can load the sanitized library."""
    # libstdc++ beside ASan: its C++ exception interceptors must find the real __cxa_throw.
    runtime = [subprocess.run(["g++", f"-print-file-name={name}"], capture_output=True,
                              text=True, check=True).stdout.strip()
               for name in ("libasan.so", "libstdc++.so")]
    env = dict(os.environ, LD_PRELOAD=":".join(runtime), **{ENV_FLAG: "1"})
    # Python and torch keep memory until exit; leak reports would drown the real ones.
    env["ASAN_OPTIONS"] = "detect_leaks=0:abort_on_error=1:detect_stack_use_after_return=0"
    env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1"
    return env


@functools.cache  # a second load would register the ops twice
def load():
    """Builds (once; cached under build/emulated) and loads the library into torch.ops."""
    import torch
    from torch.utils import cpp_extension

    build = ROOT / "build" / "emulated"
    build.mkdir(parents=True, exist_ok=True)
    # The stable-ABI target of setup.py: the launch code is written against torch 2.11's.
    flags = ["-O1", "-g", "-fno-omit-frame-pointer", "-fvisibility=hidden",
             "-Wno-unknown-pragmas", "-DTORCH_TARGET_VERSION=0x020b000000000000", *SANITIZERS]
    cpp_extension.load(name="fastgat_emulated", sources=[str(s) for s in SOURCES],
                       extra_cflags=flags, extra_ldflags=SANITIZERS, build_directory=str(build),
                       is_python_module=False, verbose=False)
    return torch.ops.fastgat_emulated


def run_suite(args) -> int:
    """A child pytest over the emulated tests (marker `emulated`) with the sanitizers loaded."""
    command = [sys.executable, "-m", "pytest", "-m", "emulated", "-p", "no:cacheprovider",
               *args]
    return subprocess.run(command, cwd=ROOT, env=sanitizer_env()).returncode


if __name__ == "__main__":
    sys.exit(run_suite(sys.argv[1:] or ["-q", "tests"]))
