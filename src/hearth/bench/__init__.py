"""`hearth bench`: what each way of serving the fraud model costs, measured side by side.

Contenders (`contenders`) are real servers on loopback, driven by one small async HTTP/1.1
load generator (`load`) with the same transactions (`workload`); `metrics` turns latencies
and process-tree CPU/memory into figures, `run` interleaves the contenders so that the
noise of a shared machine falls on all of them alike, and `report` writes the Markdown,
JSON and plots. Nothing here imports BentoML or MLflow: they run in the servers.
"""
