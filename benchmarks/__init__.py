"""Benchmarks of cloudlib against the CLOUD authors' own pipeline (not part of the installed package).

Run from the repository root: ``python -m benchmarks {scope,tokenizer,pretrain} ...``.
"""
