"""The fakes may not invent API: every name the fake TensorRT offers exists in tensorrt-stubs 10.13
(TensorRT's Python API as .pyi, installed by `make venv` for the type check), or is one of the 8.5-only
names the adapter lists (edgekit.device.engine.api.ONLY_IN_8_5); every name the fake cuda-python runtime
offers exists in the installed cuda.bindings.runtime, with the same parameters and enum members."""

import ast
import inspect
import os
import sys
import types

import fake_cuda
import pytest

from edgekit.device.engine.api import ONLY_IN_8_5

STUBS = os.path.join(sys.prefix, "typecheck", "stubs")


def _names(body):
    """Names a class or module body of a .pyi defines."""
    found = set()
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            found.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            found.add(node.target.id)
        elif isinstance(node, ast.Assign):
            found |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.ImportFrom):
            found |= {alias.asname or alias.name for alias in node.names}
    return found


@pytest.fixture(scope="module")
def stubs():
    path = os.path.join(STUBS, "tensorrt_bindings", "tensorrt.pyi")
    assert os.path.exists(path), "tensorrt-stubs are not installed under {}: run make venv".format(STUBS)
    classes = {}
    tree = ast.parse(open(path, encoding="utf-8").read())
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            classes[node.name] = (_names(node.body), [b.id for b in node.bases if isinstance(b, ast.Name)])
    top = _names(ast.parse(open(os.path.join(STUBS, "tensorrt", "__init__.pyi"), encoding="utf-8").read()).body)
    return classes, top


def _members(classes, name):
    own, bases = classes[name]
    return own.union(*[_members(classes, base) for base in bases if base in classes])


def _public(names):
    return {n for n in names if not n.startswith("_") or n == "__init__"}


def _offered(cls):
    """Public names a fake class offers: its own and its fake bases' attributes, enum members included."""
    names = set()
    for klass in cls.__mro__:
        if klass.__module__ != cls.__module__ or klass is object:
            continue
        names |= _public(vars(klass)) - {"__init__"}
    return names | set(getattr(cls, "__members__", {}))


def test_every_name_the_fake_tensorrt_offers_is_in_the_stubs(stubs, fake_gpu):
    classes, top = stubs
    world = fake_gpu()
    trt = sys.modules["tensorrt"]
    invented = []
    for name, value in vars(trt).items():
        if name.startswith("__") and name != "__version__":
            continue
        if name not in top and name not in ONLY_IN_8_5:
            invented.append(name)
        if isinstance(value, type):
            offered = _offered(value)
            invented += ["{}.{}".format(name, m) for m in offered - _members(classes, name)
                         if "{}.{}".format(name, m) not in ONLY_IN_8_5]
    # instance attributes too, on objects the fake makes in a run
    import pycuda.driver as cuda

    cuda.init()
    context = cuda.Device(0).retain_primary_context()
    context.push()
    try:
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engine = runtime.deserialize_cuda_engine(b"serialized")
        execution = engine.create_execution_context()
        for obj in (runtime, engine, execution, trt.Builder(trt.Logger())):
            kind = type(obj).__name__
            invented += ["{}.{}".format(kind, m) for m in _public(vars(obj)) - _members(classes, kind)]
        del execution, engine
    finally:
        cuda.Context.pop()
        context.detach()
    assert invented == []
    assert world.exit_problems() == []


def test_the_fake_enums_refuse_unknown_names(fake_gpu):
    fake_gpu()
    trt = sys.modules["tensorrt"]
    with pytest.raises(AttributeError):
        trt.DataType.FLOAT64  # noqa: B018 - no such member
    assert trt.TensorIOMode.INPUT != "INPUT" and trt.TensorIOMode.INPUT != 1  # members equal only themselves
    with pytest.raises(TypeError):
        trt.Logger(2)  # a severity is a Severity, not an int


def test_every_name_the_fake_cuda_runtime_offers_is_in_cuda_python():
    real = pytest.importorskip("cuda.bindings.runtime", reason="cuda-python's bindings install with torch's CUDA "
                               "build; without them there is nothing to hold the fake against")
    fake = fake_cuda.cuda_runtime(fake_cuda.World())
    problems = []
    for name, value in vars(fake).items():
        if name.startswith("_"):
            continue
        if not hasattr(real, name):
            problems.append(name)
        elif isinstance(value, type) and hasattr(value, "__members__"):
            problems += ["{}.{}".format(name, m) for m in value.__members__ if not hasattr(getattr(real, name), m)]
        elif isinstance(value, types.FunctionType):
            want = list(inspect.signature(getattr(real, name)).parameters)
            if len(inspect.signature(value).parameters) != len(want):
                problems.append("{}{}".format(name, tuple(want)))
    assert problems == []


def test_a_fake_name_missing_from_the_stubs_is_caught(stubs):
    classes, _ = stubs
    # TensorRT 8.5's binding API, gone in 10: a fake that offered it would need ONLY_IN_8_5 to say so
    assert "set_binding_shape" not in _members(classes, "IExecutionContext")
    assert "set_input_shape" in _members(classes, "IExecutionContext")
    assert "min_severity" in _members(classes, "Logger") and "WARNING" in _members(classes, "Logger")
