"""Knowledge: RDF terms and graphs, their canonical form, and SHACL shapes.

The bottom of the pure decision layer: ``analyze``, ``plan``, ``validate`` and
``execute`` build on what is here. Nothing in this package reads a clock,
draws random numbers or touches storage; files are read only when a loader is
called with an explicit path.
"""
