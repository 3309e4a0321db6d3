"""The plugin interface: hook specifications, the objects plugins register, and the manager."""
