#!/usr/bin/env python3
"""Registers and spill bytes of every CUDA kernel, from nvcc's `-Xptxas -v` report.

Compiles csrc/cuda/{gat,gatv2,transformer}_cuda.cu for one architecture (no GPU needed) and
prints one row per kernel family x template arguments: registers, stack frame, spill stores
and spill loads. From the repository root, in an environment whose torch has the CUDA headers:

    python scripts/ptxas_report.py [--arch 90] [--log FILE] [--from-log FILE]

--log keeps the raw nvcc output; --from-log re-prints a table from such a file without
compiling. Set CUDA_INCLUDE to add include folders (e.g. the nvidia/cu13/include of a pip CUDA).
"""
import argparse
import os
import re
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

SOURCES = ("gat_cuda.cu", "gatv2_cuda.cu", "transformer_cuda.cu")
ENTRY = re.compile(r"Compiling entry function '(\S+)' for '(sm_\d+)'")
SPILLS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
REGISTERS = re.compile(r"Used (\d+) registers")


def nvcc_report(source: Path, arch: str) -> str:
    from torch.utils.cpp_extension import include_paths

    includes = [*include_paths("cuda"), sysconfig.get_paths()["include"]]
    includes += [p for p in os.environ.get("CUDA_INCLUDE", "").split(os.pathsep) if p]
    with tempfile.TemporaryDirectory() as tmp:
        command = [
            "nvcc", "-std=c++20", "-O3", "--expt-relaxed-constexpr",
            f"-gencode=arch=compute_{arch},code=sm_{arch}", "-DWITH_CUDA", "-Xptxas", "-v",
            *(f"-I{p}" for p in includes), "-c", str(source), "-o", f"{tmp}/kernel.o",
        ]
        done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"nvcc failed on {source}:\n{done.stderr[-4000:]}")
    return done.stderr


def parse(report: str) -> list[dict]:
    """One dict per entry function; ptxas prints spills and registers after the entry line."""
    kernels = []
    for line in report.splitlines():
        if match := ENTRY.search(line):
            kernels.append({"mangled": match[1], "arch": match[2]})
        elif kernels and (match := SPILLS.search(line)):
            kernels[-1].update(stack=int(match[1]), stores=int(match[2]), loads=int(match[3]))
        elif kernels and (match := REGISTERS.search(line)):
            kernels[-1]["registers"] = int(match[1])
    return kernels


def readable_names(mangled: list[str]) -> list[str]:
    """Demangled, then shortened: the namespace, argument struct and c10:: prefixes carry
    nothing the family and template arguments do not already say."""
    done = subprocess.run(["c++filt"], input="\n".join(mangled), capture_output=True, text=True)
    names = done.stdout.splitlines()
    shorter = []
    for name in names:
        name = name.split("(")[0].replace("fastgat::cuda::", "").replace("c10::", "")
        shorter.append(name.replace("void ", "").replace("BFloat16", "bf16").replace("Half", "f16"))
    return shorter


def dtype_of(name: str) -> str:
    for dtype in ("bf16", "f16", "double", "float"):
        if re.search(rf"\b{dtype}\b", name):
            return dtype
    return "-"


def table(kernels: list[dict]) -> str:
    """One row per kernel; a kernel shared by several .cu files is compiled, and listed, once."""
    rows = dict(sorted(zip(readable_names([k["mangled"] for k in kernels]), kernels)))
    width = max(map(len, rows))
    lines = [f"{'kernel':<{width}}  arch    regs  stack  spill-st  spill-ld"]
    for name, k in rows.items():
        lines.append(f"{name:<{width}}  {k['arch']:<6} {k['registers']:>5}  {k['stack']:>5}"
                     f"  {k['stores']:>8}  {k['loads']:>8}")
    return "\n".join(lines + ["", summary(rows)])


def summary(rows: dict[str, dict]) -> str:
    """Per family x dtype (over the other template arguments): register range, spilling count."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for name, k in rows.items():
        rule = re.search(r"(\w+Rule)<", name)
        family = name.split("<")[0] + (f" {rule[1]}" if rule else "")
        groups.setdefault((family, dtype_of(name)), []).append(k)
    lines = ["| family | dtype | registers | kernels with spills | max spill st/ld bytes |",
             "|---|---|---|---|---|"]
    for (family, dtype), ks in sorted(groups.items()):
        regs = sorted(k["registers"] for k in ks)
        spilling = [k for k in ks if k["stores"] or k["loads"]]
        spill = (f"{max(k['stores'] for k in ks)}/{max(k['loads'] for k in ks)}"
                 if spilling else "0")
        lines.append(f"| {family} | {dtype} | {regs[0]}-{regs[-1]} | {len(spilling)}/{len(ks)}"
                     f" | {spill} |")
    spilling = sum(1 for k in rows.values() if k["stores"] or k["loads"])
    lines.append(f"\n{len(rows)} kernels, {spilling} with spills, "
                 f"max {max(k['registers'] for k in rows.values())} registers")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="90", help="compute capability digits, e.g. 90 or 80")
    parser.add_argument("--log", type=Path, help="also write nvcc's raw report here")
    parser.add_argument("--from-log", type=Path, help="table from a saved report; no compiling")
    args = parser.parse_args()
    if args.from_log:
        report = args.from_log.read_text()
    else:
        root = Path(__file__).resolve().parent.parent / "csrc" / "cuda"
        report = "".join(nvcc_report(root / source, args.arch) for source in SOURCES)
        if args.log:
            args.log.write_text(report)
    print(table(parse(report)))


if __name__ == "__main__":
    main()
