"""The executor service: container processes under per-container shims, cgroups, exec, logs and networking."""
