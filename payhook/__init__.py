"""Composition root: the ``payhook`` command, logging set-up, and ``payhook run``.

The only package allowed to import both ``ingress`` and ``workers``.
"""
