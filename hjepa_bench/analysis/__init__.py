"""Pure analysis functions behind the probes: data in, data out (no devices, no files)."""
