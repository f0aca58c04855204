"""rnnkit export: model repositories for TF Serving, Triton and rnnkit's server.

Not implemented yet (see the export issue); the package exists so the import-direction
rule and the type checker cover it from the start.
"""
