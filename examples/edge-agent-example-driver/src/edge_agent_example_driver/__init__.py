"""An example edge-agent driver, packaged and registered as a third party would do it."""
