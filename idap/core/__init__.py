"""Foundations that know no model or dataset: config and schema, typed settings,
registries, file I/O, process set-up."""
