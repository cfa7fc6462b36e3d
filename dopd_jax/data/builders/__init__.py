"""Builders for public datasets read from a locally downloaded copy (nothing is downloaded).

gsm8k  GSM8K (``train.jsonl`` / ``test.jsonl``) -> ``Example`` with the privileged
       forms ``solution``, ``hints`` and ``answer``; written as a TFDS dataset
       (``prepare --source gsm8k``, or the ``Gsm8k`` TFDS builder) or as JSONL
       (``python -m dopd_jax.data.builders.gsm8k``)
"""
