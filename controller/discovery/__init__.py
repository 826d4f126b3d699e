"""Where instances come from besides literal addresses: DNS names (`dns`)."""
