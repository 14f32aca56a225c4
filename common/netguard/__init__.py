"""Outbound HTTP to URLs that users give us (audio downloads, task callbacks), without SSRF.

:mod:`~common.netguard.policy` decides which URLs and addresses may be contacted;
:mod:`~common.netguard.transport` makes the bounded HTTP exchange, connected to exactly
the address the policy vetted.
"""
