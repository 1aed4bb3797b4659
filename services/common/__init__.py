"""Code every mydocker service shares: configuration, errors, server bootstrap and clients."""
