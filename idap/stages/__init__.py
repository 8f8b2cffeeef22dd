"""Pipeline stages: the orchestrator that walks a method's stages, each stage a function of
(state, context), and the adapters that load and save artifacts around them."""
