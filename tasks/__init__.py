"""Flyte tasks: thin calls into ``ebr`` and ``pipelines``.

A task receives the workspace as a ``Workspace`` (``ebr.config``): on the wire it is the root
path, a Flyte string (what workflows and launch plans pass, and what the cache keys on); this
module registers the transformer that turns one into the other, so no task rebuilds it. A
Python caller may pass a ``Workspace``, a path or a string.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgpack
from flytekit.core.constants import MESSAGEPACK
from flytekit.core.context_manager import FlyteContext
from flytekit.core.type_engine import TypeEngine, TypeTransformer, TypeTransformerFailedError
from flytekit.models.literals import Literal, Primitive, Scalar
from flytekit.models.types import LiteralType, SimpleType

from ebr.config import Workspace


class WorkspaceTransformer(TypeTransformer[Workspace]):
    """``Workspace`` <-> a Flyte string (its root path)."""

    def __init__(self) -> None:
        super().__init__("workspace", Workspace, enable_type_assertions=False)

    def get_literal_type(self, t: Any = None) -> LiteralType:
        return LiteralType(simple=SimpleType.STRING)

    def to_literal(
        self, ctx: FlyteContext, python_val: Any, python_type: Any, expected: LiteralType
    ) -> Literal:
        root = python_val.root if isinstance(python_val, Workspace) else python_val
        if not isinstance(root, str | os.PathLike) or not str(root):
            raise TypeTransformerFailedError(f"a workspace is a non-empty path, got {root!r}")
        return Literal(scalar=Scalar(primitive=Primitive(string_value=str(root))))

    def to_python_value(
        self, ctx: FlyteContext, lv: Literal, expected_python_type: Any
    ) -> Workspace:
        root: Any = None
        if lv.scalar and lv.scalar.primitive:
            root = lv.scalar.primitive.string_value
        elif lv.scalar and lv.scalar.binary and lv.scalar.binary.tag == MESSAGEPACK:
            root = msgpack.loads(lv.scalar.binary.value)  # a config's attribute (config.workspace)
        if not isinstance(root, str) or not root:
            raise TypeTransformerFailedError(f"a workspace is a non-empty path string, got {lv}")
        return Workspace(Path(root))


if Workspace not in TypeEngine._REGISTRY:  # registered once per process
    TypeEngine.register(WorkspaceTransformer())
