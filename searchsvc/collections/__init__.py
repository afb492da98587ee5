"""The set of collections and what manages them: the catalog, aliases, snapshots."""
