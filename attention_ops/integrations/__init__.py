"""Adapters that plug attention-ops into other libraries. Each imports its library lazily, so
none of them is a dependency: ``attention_ops.integrations.transformers`` needs
``transformers`` only when imported."""
