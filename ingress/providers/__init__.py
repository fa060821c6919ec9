"""Provider modules by route name: ``/callbacks/<name>/<account>`` uses ``PROVIDERS[name]``.

A sixth provider is one module implementing ``ingress.providers.base.ProviderModule`` plus one
line here.
"""

from __future__ import annotations

from collections.abc import Mapping

from ingress.providers.base import ProviderModule
from ingress.providers.paycore import PAYCORE
from ingress.providers.paygol import PAYGOL
from ingress.providers.paypro import PAYPRO
from ingress.providers.paysepro import PAYSEPRO
from ingress.providers.paysera import PAYSERA

__all__ = ["PROVIDERS"]

PROVIDERS: Mapping[str, ProviderModule] = {
    module.name: module for module in (PAYSERA, PAYGOL, PAYCORE, PAYPRO, PAYSEPRO)
}
