"""The greenserve serving-image agent: GPU telemetry exporter and drain supervisor."""
