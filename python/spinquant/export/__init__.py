"""ExecuTorch export and runtime: spinquant custom ops, the exportable decoder, the exporter, the runtime."""
