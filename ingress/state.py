"""What a request handler needs, held under one typed ``AppKey``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web

from contracts.config import Config
from ingress.broker import CallbackPublisher
from ingress.metrics import IngressMetrics
from ingress.providers.base import ProviderModule

__all__ = ["STATE", "IngressState"]


@dataclass(frozen=True, slots=True)
class IngressState:
    config: Config
    providers: Mapping[str, ProviderModule]
    publisher: CallbackPublisher
    metrics: IngressMetrics | None = None  # None: PAYHOOK_METRICS=false


STATE = web.AppKey("payhook_ingress_state", IngressState)
