"""Operations: the HTTP endpoints (`http`), readiness (`readiness`), the status page
(`status_page`), Prometheus metrics (`metrics`), all fed by one snapshot (`snapshot`) taken on
the event loop."""
