"""The ledger: payments, their state machine, double-entry postings, order expectations.

Entry points (imported by the ``payhook`` composition root):
- ``workers.ledger.consumer.run_ledger_worker(settings, config, stop)``: the worker role.
- ``workers.ledger.admin.run_admin(settings, config, stop)``: the admin HTTP listener.
- ``workers.ledger.commands.register(subparsers)``: ``payhook payments …`` and ``payhook ledger …``.

Pure rules live in ``states``, ``postings``, ``decide``; SQL in ``store``; one batch's
transaction in ``apply``. See docs/ledger.md.
"""
