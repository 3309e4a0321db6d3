"""Pure analysis functions behind the probes and the reports: data in, data out (no devices, no files)."""
