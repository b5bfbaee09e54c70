"""The model zoo: the adapter contract, the registry, the adapters and native architectures, and the
conformance checks. Usable without the harness: ``from models import create``."""

from models.base import Capabilities, InverseInfo, InvertibleModel, UnsupportedCapability
from models.registry import UnknownModel, create, get, names, register

__all__ = [
    "Capabilities",
    "InverseInfo",
    "InvertibleModel",
    "UnknownModel",
    "UnsupportedCapability",
    "create",
    "get",
    "names",
    "register",
]
