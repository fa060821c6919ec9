"""Merchant webhook delivery: Standard Webhooks signing, RabbitMQ retry schedule, replay.

``run_webhook_worker`` is the long-running role; ``workers.webhooks.commands.register`` adds
the ``payhook webhooks …`` operator commands.
"""

from workers.webhooks.consumer import run_webhook_worker

__all__ = ["run_webhook_worker"]
