"""Starting Hearth's server processes: the one launcher (`launcher`), the serving topologies
(`topologies`) and a `hearth serve` child (`hearth_server`).

Orchestration below `hearth up`, `hearth bench` and the demo, which all use it; the services
(hearth.serving) never start processes. Kept light: the CLI imports `topologies` at start.
"""
