"""A mypy plugin that records each TensorRT and CUDA runtime name mypy resolved in the checked code:
calls (functions, methods, constructors) and attribute reads, as JSON lines in $EDGEKIT_TYPECHECK_USES.
.ci/typecheck.py loads it and counts them (mypy's own visitors are compiled and cannot be subclassed)."""

import json
import os
from typing import Callable, Optional

from mypy.plugin import AttributeContext, FunctionContext, MethodContext, Plugin
from mypy.types import Type

PREFIXES = ("tensorrt.", "tensorrt_bindings.", "cuda.bindings.runtime.")


def _record(kind: str, name: str, path: str, line: int, column: int) -> None:
    with open(os.environ["EDGEKIT_TYPECHECK_USES"], "a", encoding="utf-8") as f:
        f.write(json.dumps([kind, name, path, line, column]) + "\n")


class Uses(Plugin):
    def _call(self, fullname: str) -> Optional[Callable[[FunctionContext], Type]]:
        if not fullname.startswith(PREFIXES):
            return None

        def hook(ctx: FunctionContext) -> Type:
            _record("call", fullname, ctx.api.path, ctx.context.line, ctx.context.column)
            return ctx.default_return_type

        return hook

    def get_function_hook(self, fullname: str) -> Optional[Callable[[FunctionContext], Type]]:
        return self._call(fullname)

    def get_method_hook(self, fullname: str) -> Optional[Callable[[MethodContext], Type]]:
        return self._call(fullname)  # type: ignore[return-value]  # MethodContext has the same fields

    def get_attribute_hook(self, fullname: str) -> Optional[Callable[[AttributeContext], Type]]:
        return self._attribute(fullname)

    def get_class_attribute_hook(self, fullname: str) -> Optional[Callable[[AttributeContext], Type]]:
        return self._attribute(fullname)

    def _attribute(self, fullname: str) -> Optional[Callable[[AttributeContext], Type]]:
        if not fullname.startswith(PREFIXES):
            return None

        def hook(ctx: AttributeContext) -> Type:
            _record("attribute", fullname, ctx.api.path, ctx.context.line, ctx.context.column)
            return ctx.default_attr_type

        return hook


def plugin(version: str) -> type:
    return Uses
