"""The one place where the tests reach into Triton's internals (for test_triton_compile.py):
recording launches instead of running them, and specializing a launch exactly as
JITFunction.run does before compiling it for a GPU that is not there.

Written against triton 3.6 to 3.9. A release that moves these names fails here, and the
error names the installed Triton version and this file."""
import functools

import triton

USES = ("Autotuner.run / prune_configs / arg_names / fn", "JITFunction.run / signature / "
        "params / _pack_args", "create_function_from_signature", "make_backend, GPUTarget, "
        "ASTSource")


class InternalsChanged(RuntimeError):
    """Triton's internals are not what this module expects."""


def _guarded(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (AttributeError, ImportError, TypeError, ValueError) as error:
            raise InternalsChanged(
                f"triton {triton.__version__} broke tests/triton_internals.py ({fn.__name__}: "
                f"{type(error).__name__}: {error}); it uses {'; '.join(USES)}") from error
    return wrapper


@_guarded
def capture_launches():
    """Replace kernel launches by recorders; returns the list they fill with
    (JITFunction, args, kwargs, [config kwargs the autotuner's pruner leaves, or {}])."""
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction
    launches = []

    def tuned_run(self, *args, **kwargs):
        kwargs = {k: v for k, v in kwargs.items() if k not in ("grid", "warmup")}
        self.nargs = dict(zip(self.arg_names, args))
        configs = [c.all_kwargs() for c in self.prune_configs(kwargs)]
        self.nargs = None
        launches.append((self.fn, args, kwargs, configs))

    def plain_run(self, *args, grid, warmup, **kwargs):
        launches.append((self, args, kwargs, [{}]))

    Autotuner.run, JITFunction.run = tuned_run, plain_run
    return launches


@_guarded
def _specialize(fn, args, kwargs, arch):
    """(ASTSource, target, options, signature) of a launch, as JITFunction.run builds them."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound,
                                                          specialization, options)
    return ASTSource(fn, signature, constexprs, attrs), target, options, signature


def compile_launch(fn, args, kwargs, arch):
    """(signature, compiled kernel) of one recorded launch, for NVIDIA sm_<arch>. Errors of the
    compiler itself (a kernel that does not compile) pass through as they are."""
    source, target, options, signature = _specialize(fn, args, kwargs, arch)
    return signature, triton.compile(source, target=target, options=options.__dict__)
